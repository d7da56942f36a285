//! Back-pressure at the door: CreateUser is refused with `RESOURCE_EXHAUSTED` while more flows
//! wait in the chain than the limit, instead of piling up work whose latency grows with the
//! length of the overload.
//!
//! What waits is read where it waits: this service's outbox rows (not yet taken by the broker)
//! and the ready messages of every work queue of the chain (`user_created` for the order
//! service, `order_created` for the payment service, `payment_processed` for the order
//! service), by a passive declaration, the broker's own count. A probe runs every
//! [`PROBE_INTERVAL`]; calls accepted since the last probe count too, so a burst cannot slip in
//! between two probes. An accepted call is never refused later: its user and event are
//! committed, and the bound on the backlog bounds how long it waits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use messaging::{Bus, QueueProbe, topology};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often the backlog is read.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How long a refused client is asked to wait before it tries again (`google.rpc.RetryInfo`).
pub const RETRY_AFTER: Duration = Duration::from_millis(100);

/// The backlog of the chain and the admission of new flows against its limit.
#[derive(Debug)]
pub struct Backlog {
    /// Flows allowed to wait in the chain; 0 admits everything.
    limit: u64,
    /// What the last probe found.
    probed: AtomicU64,
    /// Calls admitted since the last probe began.
    admitted: AtomicU64,
}

impl Backlog {
    /// A backlog admitting up to `limit` waiting flows (0: no limit).
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            probed: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
        })
    }

    /// Whether one more flow may enter; when it may, it counts as waiting until the next probe
    /// reads it.
    pub fn admit(&self) -> bool {
        if self.limit == 0 {
            return true;
        }
        let admitted = self.admitted.fetch_add(1, Ordering::AcqRel) + 1;
        if self.probed.load(Ordering::Acquire) + admitted > self.limit {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The flows allowed to wait (0: no limit).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The flows waiting, as last estimated.
    pub fn estimate(&self) -> u64 {
        self.probed.load(Ordering::Acquire) + self.admitted.load(Ordering::Acquire)
    }

    /// Reads the backlog every [`PROBE_INTERVAL`] until `stop`. A probe that fails (no broker,
    /// no database) changes nothing, so what is admitted meanwhile keeps counting.
    pub async fn watch(self: Arc<Self>, pool: PgPool, bus: Bus, stop: CancellationToken) {
        if self.limit == 0 {
            return;
        }
        let mut queues = QueueProbe::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            let before = self.admitted.load(Ordering::Acquire);
            match probe(&pool, &bus, &mut queues).await {
                Ok(waiting) => {
                    self.probed.store(waiting, Ordering::Release);
                    // What was admitted before the probe began is in its count now.
                    self.admitted.fetch_sub(before, Ordering::AcqRel);
                    metrics::gauge!("create_user_backlog").set(waiting as f64);
                }
                Err(error) => {
                    tracing::debug!(error = format!("{error:#}"), "cannot read the backlog");
                }
            }
        }
    }
}

/// Outbox rows plus the ready messages of the chain's work queues (a queue not declared yet
/// holds nothing).
async fn probe(pool: &PgPool, bus: &Bus, queues: &mut QueueProbe) -> anyhow::Result<u64> {
    let outbox = messaging::outbox::pending(pool).await?;
    let mut waiting = u64::try_from(outbox).unwrap_or(0);
    for subscription in topology::SUBSCRIPTIONS {
        if let Some(state) = queues
            .inspect(bus, &bus.topology().queue(subscription))
            .await?
        {
            waiting += u64::from(state.messages);
        }
    }
    Ok(waiting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_counting_what_it_admitted_since_the_probe() {
        let backlog = Backlog::new(3);
        backlog.probed.store(1, Ordering::Release);
        assert!(backlog.admit());
        assert!(backlog.admit());
        assert!(!backlog.admit(), "1 waiting + 2 admitted is the limit");
        assert_eq!(backlog.estimate(), 3);
    }

    #[test]
    fn no_limit_admits_everything() {
        let backlog = Backlog::new(0);
        backlog.probed.store(1_000_000, Ordering::Release);
        assert!((0..100).all(|_| backlog.admit()));
    }
}
