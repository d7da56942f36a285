//! Applying a batch of decoded messages in one transaction: their inbox rows, each new message's
//! effect and the outbox rows of what they caused. The consumer runs it for every batch it
//! receives; the benchmark's ceiling runs it without a broker, to measure the same transaction.

use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use super::{Handler, HandlerError, Incoming};
use crate::{
    inbox,
    outbox::{self, Dispatcher},
};

/// What became of one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect and the events it caused were committed.
    Applied,
    /// It was applied before (or twice in the batch): skipped.
    Duplicate,
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
/// batch as a whole failed (its begin, inbox, outbox or commit).
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

/// One transaction for the batch: its inbox rows for `consumer` in one insert, each new
/// message's effect, and the outbox rows of everything they caused in one insert. Duplicates
/// (already in the inbox, or twice in the batch) are skipped. Nothing is settled here. With a
/// `dispatcher`, the events go to it once committed (see [`outbox::dispatch`]); without, they
/// are due at once for any relay.
pub async fn apply_batch<H: Handler>(
    pool: &PgPool,
    consumer: &str,
    handler: &H,
    batch: &[BatchMessage<'_, H::Event, H::Prepared>],
    dispatcher: Option<&Dispatcher>,
) -> Result<Vec<Outcome>, BatchFailure> {
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = batch.iter().map(|item| item.message.message_id).collect();
    let mut fresh = inbox::record_all(&mut tx, consumer, &ids).await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut caused = Vec::new();
    for (at, item) in batch.iter().enumerate() {
        if !fresh.remove(&item.message.message_id) {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        let events = handler
            .handle(&mut tx, item.message, item.prepared)
            .instrument(item.span.clone())
            .await
            .map_err(|error| BatchFailure {
                at: Some(at),
                error,
            })?;
        caused.extend(events);
        outcomes.push(Outcome::Applied);
    }
    match dispatcher {
        Some(dispatcher) => dispatcher.enqueue(&mut tx, &caused).await?,
        None => outbox::enqueue_all(&mut tx, &caused).await?,
    }
    tx.commit().await?;
    if let Some(dispatcher) = dispatcher {
        dispatcher.dispatch(caused);
    }
    Ok(outcomes)
}
