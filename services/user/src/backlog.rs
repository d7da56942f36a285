//! Back-pressure at the door: CreateUser is refused with `RESOURCE_EXHAUSTED` while more flows
//! are in the chain than the limit, instead of piling up work whose latency grows with the
//! length of the overload.
//!
//! The flows in the chain are counted two ways, and the larger count holds:
//!
//! - exactly, where they start and end: the flows this instance started and has not seen end
//!   ([`FlowsInFlight`]), wherever they are, deliveries a consumer holds unacknowledged included;
//! - as a floor, read where they wait: this service's outbox rows (not yet taken by the broker)
//!   and the ready messages of every work queue of the chain (`user_created` for the order
//!   service, `order_created` for the payment service, `payment_processed` for the order
//!   service), by a passive declaration, the broker's own count, every [`PROBE_INTERVAL`]. It
//!   counts what the exact count cannot: flows accepted before a restart, or by another
//!   instance.
//!
//! An accepted call is never refused later: its user and event are committed, and the bound on
//! the flows in flight bounds how long it waits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use messaging::{Bus, QueueProbe, topology};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::flows::{FlowsInFlight, Slot};

/// How often the queues and the outbox are read.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How often flows past their expiry are forgotten.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);
/// How long a refused client is asked to wait before it tries again (`google.rpc.RetryInfo`),
/// on average: each refusal asks for a delay drawn evenly from half of it to one and a half
/// times it ([`retry_after`]).
pub const RETRY_AFTER: Duration = Duration::from_millis(100);

/// The delay one refused call is asked to wait, drawn evenly between half of [`RETRY_AFTER`]
/// and one and a half times it. Callers refused together retry spread out, not together: with
/// one delay for all, the callers a full chain refused come back at once, take the free slots
/// in one burst and leave the chain idle until the next, so it runs below its limit.
pub fn retry_after() -> Duration {
    let spread = RETRY_AFTER.as_micros() as u64;
    let drawn = (uuid::Uuid::new_v4().as_u128() % u128::from(spread)) as u64;
    RETRY_AFTER / 2 + Duration::from_micros(drawn)
}

/// The flows in the chain and the admission of new ones against their limit.
#[derive(Debug)]
pub struct Backlog {
    /// Flows allowed in the chain; 0 admits everything.
    limit: u64,
    /// This instance's flows, from their CreateUser to their `payment_processed`.
    flows: Arc<FlowsInFlight>,
    /// What the last probe of the queues and the outbox found.
    probed: AtomicU64,
}

impl Backlog {
    /// A backlog admitting up to `limit` flows in the chain (0: no limit), each tracked for at
    /// most `expiry` without seeing its end.
    pub fn new(limit: u64, expiry: Duration) -> Arc<Self> {
        Arc::new(Self {
            limit,
            flows: FlowsInFlight::new(limit, expiry),
            probed: AtomicU64::new(0),
        })
    }

    /// A slot for one more flow, if the chain has room: hand it to the call's write, which
    /// tracks the flow if the call creates a user and releases it otherwise.
    pub fn admit(&self) -> Option<Slot> {
        if self.limit == 0 {
            return Some(Slot::unlimited());
        }
        if self.probed.load(Ordering::Acquire) >= self.limit {
            return None;
        }
        self.flows.reserve()
    }

    /// The flows allowed in the chain (0: no limit).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// This instance's flows, for the watcher of their ends.
    pub fn flows(&self) -> &Arc<FlowsInFlight> {
        &self.flows
    }

    /// The flows in the chain, as admission counts them: the larger of the flows in flight and
    /// the last probe.
    pub fn estimate(&self) -> u64 {
        self.flows.count().max(self.probed.load(Ordering::Acquire))
    }

    /// Reads the queues and the outbox every [`PROBE_INTERVAL`], and forgets expired flows,
    /// until `stop`. A probe that fails (no broker, no database) changes nothing, so the flows
    /// admitted meanwhile keep counting.
    pub async fn watch(self: Arc<Self>, pool: PgPool, bus: Bus, stop: CancellationToken) {
        if self.limit == 0 {
            return;
        }
        let mut queues = QueueProbe::default();
        let mut swept = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            if swept.elapsed() >= EXPIRY_SWEEP {
                swept = Instant::now();
                self.flows.expire(swept);
            }
            match probe(&pool, &bus, &mut queues).await {
                Ok(waiting) => self.probed.store(waiting, Ordering::Release),
                Err(error) => {
                    tracing::debug!(error = format!("{error:#}"), "cannot read the backlog");
                }
            }
            metrics::gauge!("create_user_flows_in_flight").set(self.flows.count() as f64);
            metrics::gauge!("create_user_backlog").set(self.estimate() as f64);
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
    use uuid::Uuid;

    use super::*;

    #[test]
    fn refused_callers_are_asked_to_wait_different_delays_around_the_mean() {
        let delays: std::collections::HashSet<Duration> = (0..200).map(|_| retry_after()).collect();
        assert!(
            delays
                .iter()
                .all(|delay| (RETRY_AFTER / 2..RETRY_AFTER * 3 / 2).contains(delay)),
            "{delays:?}"
        );
        assert!(delays.len() > 100, "only {} distinct delays", delays.len());
    }

    const EXPIRY: Duration = Duration::from_secs(60);

    #[test]
    fn admits_up_to_the_limit_of_flows_in_flight_while_the_queues_look_empty() {
        let backlog = Backlog::new(2, EXPIRY);
        backlog.admit().expect("a slot").track(Uuid::new_v4());
        let _writing = backlog.admit().expect("a slot");

        assert!(
            backlog.admit().is_none(),
            "one tracked and one written is the limit"
        );
        assert_eq!(backlog.estimate(), 2);
    }

    #[test]
    fn the_probe_is_a_floor_for_flows_this_instance_does_not_track() {
        let backlog = Backlog::new(3, EXPIRY);
        backlog.probed.store(2, Ordering::Release);
        let _slot = backlog.admit().expect("2 waiting: room for one more");
        assert_eq!(backlog.estimate(), 2, "the larger count, not their sum");

        backlog.probed.store(3, Ordering::Release);

        assert!(backlog.admit().is_none(), "the queues hold the limit");
        assert_eq!(backlog.estimate(), 3);
    }

    #[test]
    fn no_limit_admits_everything_and_tracks_nothing() {
        let backlog = Backlog::new(0, EXPIRY);
        backlog.probed.store(1_000_000, Ordering::Release);
        for _ in 0..100 {
            backlog.admit().expect("admitted").track(Uuid::new_v4());
        }
        assert_eq!(backlog.flows().count(), 0);
    }
}
