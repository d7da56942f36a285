//! What a consumer's handler is: its two steps and how it says it failed.

use std::future::Future;

use proto::Event;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    db_errors::{self, DbErrorClass},
    envelope::{Envelope, Incoming},
};

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency the service cannot work without is down (the database): the message goes
    /// back to the queue without counting an attempt, and consuming pauses until it is back.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Worth retrying later (a gateway timeout, a serialization conflict): retried with
    /// back-off, a bounded number of times.
    #[error("transient failure: {0:#}")]
    Transient(anyhow::Error),
    /// Retrying cannot help (a violated invariant, a permanent gateway failure): the message goes
    /// to the dead-letter queue.
    #[error("permanent failure: {0:#}")]
    Permanent(anyhow::Error),
}

impl HandlerError {
    /// The `events_consumed_total` outcome of a message that failed with it.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Self::Transient(_) => "retried",
            Self::Permanent(_) => "dead_lettered",
            Self::Unavailable(_) => "requeued",
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        match db_errors::classify(&error) {
            DbErrorClass::Unavailable => Self::Unavailable(error.into()),
            DbErrorClass::Retry => Self::Transient(error.into()),
            DbErrorClass::Permanent => Self::Permanent(error.into()),
        }
    }
}

/// One message of a batch, with what the handler's first step prepared for it.
#[derive(Debug)]
pub struct BatchMessage<'a, E, P> {
    pub message: &'a Incoming<E>,
    pub prepared: &'a P,
    /// The span the handler runs in (the consumer's is a child of the producer's trace).
    pub span: tracing::Span,
}

/// Why a batch did not commit: the handler failed on the message at index `at`, or (`None`) the
/// batch as a whole failed (its begin, inbox, outbox or commit, or a statement the handler made
/// for several messages at once).
#[derive(Debug, thiserror::Error)]
#[error("the batch was not applied (failed at message {at:?}): {error}")]
pub struct BatchFailure {
    pub at: Option<usize>,
    pub error: HandlerError,
}

impl From<sqlx::Error> for BatchFailure {
    fn from(error: sqlx::Error) -> Self {
        Self {
            at: None,
            error: error.into(),
        }
    }
}

/// Parses an id field of an event; a malformed id is a permanent failure.
pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw)
        .map_err(|_| HandlerError::Permanent(anyhow::anyhow!("{field} {raw:?} is not a UUID")))
}

/// Applies one kind of event, in up to two steps.
///
/// [`Handler::prepare`] runs first, outside any transaction of the consumer's, once for each
/// delivery of a batch: the place for an effect outside the service's database (a call to
/// another system), which must never run inside a transaction that may be rolled back or applied
/// again. It records what it needs in transactions of its own and hands its result to the second
/// step. A message it fails on is settled alone (retried, dead-lettered or requeued), and the
/// rest go on.
///
/// The second step runs inside the consumer's transaction and returns the events each message
/// causes: its effect, the inbox row and those events' outbox rows commit together. It is
/// [`Handler::handle_batch`], called once for all the new messages of a batch (duplicates are
/// skipped before it); by default it runs [`Handler::handle`] for each message in turn, so a
/// handler that makes a statement or two per message writes only `handle`, and one that can
/// make them for the whole batch at once (one insert, one update for all its messages)
/// overrides `handle_batch` too. The transaction may hold other messages of the same batch; a
/// handler must not commit it. When a message fails, the batch is applied again without it,
/// with the same prepared results: `prepare` is never run twice for one delivery.
pub trait Handler: Send + Sync + 'static {
    /// The event this handler consumes.
    type Event: Event + Send + Sync;
    /// What [`Handler::prepare`] hands to [`Handler::handle`] for one message (`()` for a
    /// handler without a first step).
    type Prepared: Default + Send + Sync;

    /// The step outside the batch's transaction, for every message of a batch at once; the
    /// result at index `i` belongs to `messages[i]`. By default there is nothing to prepare.
    fn prepare(
        &self,
        pool: &PgPool,
        messages: &[&Incoming<Self::Event>],
    ) -> impl Future<Output = Vec<Result<Self::Prepared, HandlerError>>> + Send {
        let _ = pool;
        let prepared = messages.iter().map(|_| Ok(Self::Prepared::default()));
        std::future::ready(prepared.collect())
    }

    /// The step inside the batch's transaction for one message: the events it causes.
    fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<Self::Event>,
        prepared: &Self::Prepared,
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send;

    /// The step inside the batch's transaction for every new message of a batch at once; the
    /// events at index `i` are caused by `batch[i]`. A failure names the message at fault by its
    /// index in `batch`: it is settled alone, and the others are applied again without it. A
    /// failure without an index (a statement made for several messages failed, and which of
    /// them is at fault is not known) has the batch applied again one message at a time.
    ///
    /// By default, [`Handler::handle`] for each message in turn, in the message's span. An
    /// override must give each message the outcome `handle` would give it one message after the
    /// other, in batch order (two messages of one entity: the first one's effect, then the
    /// second finding it done), and should log what it did for a message in that message's span
    /// (`span.in_scope`).
    fn handle_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[BatchMessage<'_, Self::Event, Self::Prepared>],
    ) -> impl Future<Output = Result<Vec<Vec<Envelope>>, BatchFailure>> + Send {
        async move {
            let mut caused = Vec::with_capacity(batch.len());
            for (at, item) in batch.iter().enumerate() {
                let events = self
                    .handle(&mut *tx, item.message, item.prepared)
                    .instrument(item.span.clone())
                    .await
                    .map_err(|error| BatchFailure {
                        at: Some(at),
                        error,
                    })?;
                caused.push(events);
            }
            Ok(caused)
        }
    }
}

/// [`Handler::handle`] of a handler that overrides [`Handler::handle_batch`]: its batch step for
/// the one message, in the current span, so that the two cannot differ. (In a handler that does
/// not override `handle_batch` the two would call each other, which does not compile: "recursion
/// in an async fn requires boxing".)
pub async fn handle_alone<H: Handler>(
    handler: &H,
    tx: &mut PgConnection,
    message: &Incoming<H::Event>,
    prepared: &H::Prepared,
) -> Result<Vec<Envelope>, HandlerError> {
    let batch = [BatchMessage {
        message,
        prepared,
        span: tracing::Span::current(),
    }];
    let mut caused = handler
        .handle_batch(tx, &batch)
        .await
        .map_err(|failure| failure.error)?;
    Ok(caused.pop().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_database_is_unavailable_and_a_bad_query_permanent() {
        let lost = sqlx::Error::PoolTimedOut;
        assert!(matches!(
            HandlerError::from(lost),
            HandlerError::Unavailable(_)
        ));
        let bad = sqlx::Error::ColumnNotFound("nope".into());
        assert!(matches!(
            HandlerError::from(bad),
            HandlerError::Permanent(_)
        ));
    }

    #[test]
    fn each_failure_has_its_outcome() {
        let error = || anyhow::anyhow!("x");
        assert_eq!(HandlerError::Transient(error()).outcome(), "retried");
        assert_eq!(HandlerError::Permanent(error()).outcome(), "dead_lettered");
        assert_eq!(HandlerError::Unavailable(error()).outcome(), "requeued");
    }

    #[test]
    fn an_id_that_is_no_uuid_is_a_permanent_failure() {
        assert!(parse_id("order_id", "01a2").is_err());
        let id = Uuid::new_v4();
        assert_eq!(parse_id("order_id", &id.to_string()).expect("a UUID"), id);
    }
}
