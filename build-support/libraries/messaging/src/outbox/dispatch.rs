//! Immediate dispatch: the task that committed outbox rows hands them to its process's relay,
//! which publishes them at once, with no NOTIFY, no wake-up and no claim query on the way.
//!
//! Rows written through a [`Dispatcher`] are leased to their process: their `next_attempt_at`
//! lies [`DISPATCH_LEASE`] ahead, so no relay's claim (`next_attempt_at <= now()`) takes them
//! while they are on their way. Once published and confirmed they are deleted (together with the
//! other rows confirmed within [`super::REMOVE_DELAY`], in one statement); a publish that
//! failed reschedules its row like the relay does; a process that dies in between leaves its
//! rows to whichever relay claims them when the lease is over. A row is thus deleted only after
//! the broker's confirm, and never lost.
//!
//! Two paths publish one row only when a dispatch outlasted its lease (a broker that took longer
//! than [`DISPATCH_LEASE`] to confirm) and a relay claimed the row meanwhile. The duplicate is
//! harmless, the same event under the same `message_id`, which every consumer's inbox absorbs;
//! it is counted in `outbox_published_twice_total` when the dispatch finds its row gone.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{RelayOutcome, insert, remove_published, reschedule, sort_outcomes};
use crate::{envelope::Envelope, publisher::Publisher};

/// How long a dispatched row is kept from the relays: past it, a relay publishes the row (its
/// process died, or its dispatch is stuck). Long enough for a publish and its confirm on a
/// healthy broker many times over; short enough that a crash delays an event by seconds.
pub const DISPATCH_LEASE: Duration = Duration::from_secs(10);
/// Committed batches waiting for the relay; past it, rows wait for their lease to end instead.
const QUEUED_BATCHES: usize = 1024;

/// Hands the rows a transaction wrote to the outbox to this process's relay once it committed.
/// Cloned into every task that writes events: the gRPC API and each consumer.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    sender: mpsc::Sender<Vec<Envelope>>,
    service: String,
    lease: Duration,
}

impl Dispatcher {
    /// A dispatcher and the end its relay reads.
    pub(super) fn channel(service: String) -> (Self, mpsc::Receiver<Vec<Envelope>>) {
        let (sender, receiver) = mpsc::channel(QUEUED_BATCHES);
        let lease = DISPATCH_LEASE;
        (
            Self {
                sender,
                service,
                lease,
            },
            receiver,
        )
    }

    /// A dispatcher no relay reads, whose rows are due after `lease`: for tools that write
    /// through the services' code and take the rows out themselves (the benchmark's ceiling).
    pub fn without_relay(service: &str, lease: Duration) -> Self {
        let (mut dispatcher, _) = Self::channel(service.to_owned());
        dispatcher.set_lease(lease);
        dispatcher
    }

    /// Keeps the rows it writes from the relays for `lease`.
    pub(super) fn set_lease(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// Writes `envelopes` to the outbox in the caller's transaction, leased to this process (see
    /// the module docs). Once the transaction committed, hand them to [`Dispatcher::dispatch`];
    /// if it rolled back, there is nothing to hand.
    pub async fn enqueue(
        &self,
        connection: &mut PgConnection,
        envelopes: &[Envelope],
    ) -> Result<(), sqlx::Error> {
        insert(connection, envelopes, self.lease).await
    }

    /// Hands committed rows to the relay to publish at once. Never waits: when the relay is
    /// that far behind (or gone, shutting down), the rows are published by a relay's claim once
    /// their lease is over.
    pub fn dispatch(&self, envelopes: Vec<Envelope>) {
        if envelopes.is_empty() {
            return;
        }
        let rows = envelopes.len();
        if self.sender.try_send(envelopes).is_err() {
            metrics::counter!("outbox_dispatch_deferred_total", "service" => self.service.clone())
                .increment(rows as u64);
        }
    }
}

/// Takes the first batch and whatever else is already queued, up to `limit` rows.
pub(super) fn gather(
    first: Vec<Envelope>,
    queued: &mut mpsc::Receiver<Vec<Envelope>>,
    limit: usize,
) -> Vec<Envelope> {
    let mut rows = first;
    while rows.len() < limit {
        match queued.try_recv() {
            Ok(more) => rows.extend(more),
            Err(_) => break,
        }
    }
    rows
}

/// Publishes dispatched rows and waits for their confirms, and reschedules the rows the broker
/// did not take, outside any transaction: the rows are this process's until their lease ends.
/// The acked rows are returned for [`remove_confirmed`], which the relay runs for the acks of
/// many passes at once.
pub(super) async fn publish(
    pool: &PgPool,
    publisher: &Publisher,
    service: &str,
    rows: &[Envelope],
) -> Result<(RelayOutcome, Vec<Uuid>), sqlx::Error> {
    let outcomes = publisher.publish_batch(rows).await;
    let (published, failed) = sort_outcomes(service, rows, outcomes);
    for (message_id, error) in &failed {
        reschedule(pool, *message_id, error).await?;
    }
    let outcome = RelayOutcome {
        claimed: rows.len(),
        published: published.len(),
        failed: failed.len(),
    };
    Ok((outcome, published))
}

/// Deletes dispatched rows the broker confirmed, in one statement, and counts those a relay
/// published meanwhile (their lease was over, so they were gone already).
pub(super) async fn remove_confirmed(
    pool: &PgPool,
    service: &str,
    confirmed: &[Uuid],
) -> Result<usize, sqlx::Error> {
    let deleted = remove_published(pool, confirmed).await?;
    if let Some(twice) = confirmed.len().checked_sub(deleted).filter(|n| *n > 0) {
        // A relay claimed them once their lease was over, and published them too.
        tracing::debug!(
            rows = twice,
            "dispatched rows were relayed meanwhile; published twice"
        );
        metrics::counter!("outbox_published_twice_total", "service" => service.to_owned())
            .increment(twice as u64);
    }
    Ok(deleted)
}

/// Ends the lease of rows that cannot be dispatched (no broker connection): the relay takes
/// them on its next pass.
pub(super) async fn release(pool: &PgPool, rows: &[Envelope]) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.message_id).collect();
    sqlx::query("update outbox set next_attempt_at = now() where message_id = any($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
}
