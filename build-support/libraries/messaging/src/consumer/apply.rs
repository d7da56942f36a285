//! Applying a batch of decoded messages in one transaction: their inbox rows, each new message's
//! effect and the outbox rows of what they caused. The consumer runs it for every batch it
//! receives; the benchmark's ceiling runs it without a broker, to measure the same transaction.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{BatchFailure, BatchMessage, Handler, HandlerError};
use crate::{
    Envelope, inbox,
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

/// The handler's step for the new messages of a batch, in one call: the events they caused, in
/// batch order. A failure names its message by its position in the batch (`positions[i]` is
/// where `new[i]` stands).
async fn handle_new<H: Handler>(
    tx: &mut PgConnection,
    handler: &H,
    new: &[BatchMessage<'_, H::Event, H::Prepared>],
    positions: &[usize],
) -> Result<Vec<Envelope>, BatchFailure> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let caused = handler
        .handle_batch(tx, new)
        .await
        .map_err(|failure| BatchFailure {
            at: failure.at.and_then(|at| positions.get(at).copied()),
            error: failure.error,
        })?;
    if caused.len() != new.len() {
        // A handler bug: which message's events are missing is not known.
        tracing::error!(
            expected = new.len(),
            got = caused.len(),
            "the handler answered for a different number of messages"
        );
        return Err(BatchFailure {
            at: None,
            error: HandlerError::Permanent(anyhow::anyhow!(
                "the handler answered for {} of {} messages",
                caused.len(),
                new.len()
            )),
        });
    }
    Ok(caused.into_iter().flatten().collect())
}

/// One transaction for the batch: its inbox rows for `consumer` in one insert, the new messages'
/// effects in one call of the handler's [`Handler::handle_batch`], and the outbox rows of
/// everything they caused in one insert. Duplicates (already in the inbox, or twice in the
/// batch) are skipped. Nothing is settled here. With a `dispatcher`, the events go to it once
/// committed (see [`outbox::dispatch`]); without, they are due at once for any relay.
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
    // The new messages, and where each stands in the batch.
    let mut new = Vec::with_capacity(batch.len());
    let mut positions = Vec::with_capacity(batch.len());
    for (at, item) in batch.iter().enumerate() {
        if !fresh.remove(&item.message.message_id) {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        new.push(BatchMessage {
            message: item.message,
            prepared: item.prepared,
            span: item.span.clone(),
        });
        positions.push(at);
        outcomes.push(Outcome::Applied);
    }
    let caused = handle_new(&mut tx, handler, &new, &positions).await?;
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
