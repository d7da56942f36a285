//! What a consumer's handler is: its two steps and how it says it failed.

use std::future::Future;

use proto::Event;
use sqlx::{PgConnection, PgPool};
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
/// again. It records what it needs in transactions of its own and hands its result to
/// [`Handler::handle`]. A message it fails on is settled alone (retried, dead-lettered or
/// requeued), and the rest go on.
///
/// [`Handler::handle`] runs inside the consumer's transaction and returns the events the message
/// causes: its effect, the inbox row and those events' outbox rows commit together. The
/// transaction may hold other messages of the same batch; a handler must not commit it. When
/// another message of the batch fails, the batch is applied again without it, with the same
/// prepared results: `prepare` is never run twice for one delivery.
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

    fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<Self::Event>,
        prepared: &Self::Prepared,
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send;
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
