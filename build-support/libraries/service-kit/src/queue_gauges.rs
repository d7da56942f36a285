//! The broker side of a service's health, as gauges: the ready messages of the queues it
//! consumes and of their dead-letter queues, the consumers on its queues, and whether it is
//! connected. Read by passive declarations, the broker's own counts.

use messaging::{Bus, QueueProbe, topology::Subscription};
use tokio_util::sync::CancellationToken;

use crate::metrics::OUTBOX_STATS_INTERVAL;

/// Keeps `queue_messages_ready`, `queue_consumers` and `broker_connected` current for the
/// queues in `consumes` (with their dead-letter queues) until `stop`. A reading that fails (no
/// broker) leaves the queue gauges as they were; `broker_connected` says why.
pub(crate) async fn watch(
    bus: Bus,
    service: &'static str,
    consumes: Vec<Subscription>,
    stop: CancellationToken,
) {
    let mut probe = QueueProbe::default();
    let mut interval = tokio::time::interval(OUTBOX_STATS_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let connected = bus.current().is_some();
        metrics::gauge!("broker_connected", "service" => service)
            .set(f64::from(u8::from(connected)));
        for subscription in &consumes {
            if let Err(error) = record(&bus, &mut probe, subscription).await {
                tracing::debug!(
                    error = format!("{error:#}"),
                    "cannot read the queues' state"
                );
                break;
            }
        }
    }
}

async fn record(
    bus: &Bus,
    probe: &mut QueueProbe,
    subscription: &Subscription,
) -> anyhow::Result<()> {
    let topology = bus.topology();
    let (consumer, queue) = (subscription.consumer, subscription.queue);
    if let Some(state) = probe.inspect(bus, &topology.queue(subscription)).await? {
        metrics::gauge!("queue_messages_ready", "consumer" => consumer, "queue" => queue, "kind" => "work")
            .set(f64::from(state.messages));
        metrics::gauge!("queue_consumers", "consumer" => consumer, "queue" => queue)
            .set(f64::from(state.consumers));
    }
    if let Some(state) = probe
        .inspect(bus, &topology.dead_letter_queue(subscription))
        .await?
    {
        metrics::gauge!("queue_messages_ready", "consumer" => consumer, "queue" => queue, "kind" => "dead_letter")
            .set(f64::from(state.messages));
    }
    Ok(())
}
