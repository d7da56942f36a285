//! Where this instance's flows end: every `payment_processed` is watched, without taking it from
//! the order service, on a private queue of this instance's own (exclusive, gone with its
//! connection), and the flow of the event's user ends (see [`FlowsInFlight::complete`]).
//!
//! The watcher follows the bus through reconnects. When it subscribes after a subscription was
//! lost or failed, it may have missed ends meanwhile: the flows accepted before are forgotten
//! rather than held until they expire. A message that does not decode as a `payment_processed`,
//! or whose producer is not trusted for it, ends nothing; no message can stop the watcher.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{message::Delivery, options::BasicAckOptions};
use messaging::{Bus, Connected, consumer::take_ready, envelope::decode, topology::WatchBounds};
use proto::{Event, payment::v1::PaymentProcessed, user::v1::UserCreated};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::flows::FlowsInFlight;

/// The private queue's bounds: deliveries are acknowledged together, after each batch of those
/// already received, and a watcher that falls behind loses the oldest events (their flows
/// expire) instead of growing the broker's memory.
const BOUNDS: WatchBounds = WatchBounds {
    prefetch: 256,
    max_length: 10_000,
};
/// How long subscribing (channel, queue, binding, consumer) or an ack may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before subscribing again after a failure on a connection that stays up.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// How a subscription ended.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// The connection changed, or the consumer or its channel failed.
    Lost(anyhow::Error),
}

/// Watches `payment_processed` on `bus` until `stop`, ending the flows of `flows` it reports.
pub async fn watch(flows: Arc<FlowsInFlight>, bus: Bus, stop: CancellationToken) {
    let mut connection = bus.watch();
    // The first attempt follows the bus's first connection, before a flow accepted meanwhile can
    // have ended (one that did anyway expires); every later one may have missed ends.
    let mut tried_before = false;
    loop {
        let current = connection.borrow_and_update().clone();
        if let Some(connected) = current {
            let subscribed = subscribe(&bus, &connected).await;
            let missed_ends = std::mem::replace(&mut tried_before, true);
            match subscribed {
                Ok(deliveries) => {
                    if missed_ends {
                        let forgotten = flows.forget_accepted();
                        tracing::info!(
                            forgotten,
                            "watching payment_processed again; the flows accepted before are \
                             no longer counted"
                        );
                    }
                    match follow(&flows, &bus, deliveries, &mut connection, &stop).await {
                        Ended::Stopped => return,
                        Ended::Lost(error) => tracing::warn!(
                            error = format!("{error:#}"),
                            "stopped watching payment_processed; resubscribing"
                        ),
                    }
                }
                Err(error) => tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot watch payment_processed: until it can, flows in flight end only by \
                     expiry (may its broker user declare, bind and read queues of its own, and \
                     read payment_processed?)"
                ),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = connection.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RESUBSCRIBE_PAUSE), if connection.borrow().is_some() => {}
        }
    }
}

/// A consumer on a private queue bound to `payment_processed`.
async fn subscribe(bus: &Bus, connected: &Connected) -> anyhow::Result<lapin::Consumer> {
    let subscribing = bus.topology().watch_bounded(
        &connected.connection,
        UserCreated::PRODUCER,
        PaymentProcessed::ROUTING_KEY,
        BOUNDS,
    );
    Ok(tokio::time::timeout(BROKER_TIMEOUT, subscribing).await??)
}

/// Ends the flows of the deliveries until `stop`, the connection changing, or the consumer
/// failing.
async fn follow(
    flows: &FlowsInFlight,
    bus: &Bus,
    mut deliveries: lapin::Consumer,
    connection: &mut watch::Receiver<Option<Connected>>,
    stop: &CancellationToken,
) -> Ended {
    let mut batch = Vec::with_capacity(usize::from(BOUNDS.prefetch));
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ended::Stopped,
            _ = connection.changed() => {
                return Ended::Lost(anyhow::anyhow!("the connection to the broker changed"));
            }
            next = deliveries.next() => next,
        };
        match next {
            Some(Ok(delivery)) => batch.push(delivery),
            Some(Err(error)) => return Ended::Lost(error.into()),
            None => return Ended::Lost(anyhow::anyhow!("the broker cancelled the consumer")),
        }
        let ended = take_ready(&mut deliveries, &mut batch, usize::from(BOUNDS.prefetch));
        for delivery in &batch {
            end_flow(flows, bus, delivery);
        }
        if let Some(last) = batch.last() {
            let ack = last.ack(BasicAckOptions { multiple: true });
            match tokio::time::timeout(BROKER_TIMEOUT, ack).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Ended::Lost(error.into()),
                Err(_) => {
                    return Ended::Lost(anyhow::anyhow!("an ack took over {BROKER_TIMEOUT:?}"));
                }
            }
        }
        batch.clear();
        if let Some(error) = ended {
            return Ended::Lost(error);
        }
    }
}

/// Ends the flow of the user a trusted `payment_processed` names; anything else ends nothing.
fn end_flow(flows: &FlowsInFlight, bus: &Bus, delivery: &Delivery) {
    if !bus.trusts(PaymentProcessed::ROUTING_KEY, &delivery.properties) {
        tracing::debug!(
            producer = ?bus.producer_of(&delivery.properties),
            "ignoring a payment_processed from a producer not trusted for it"
        );
        return;
    }
    match user_of(delivery) {
        Some(user_id) => {
            flows.complete(user_id);
        }
        None => tracing::debug!("ignoring a message that is not a payment_processed"),
    }
}

/// The user a `payment_processed` delivery names, if it is one.
fn user_of(delivery: &Delivery) -> Option<Uuid> {
    let incoming = decode::<PaymentProcessed>(delivery).ok()?;
    Uuid::parse_str(&incoming.event.user_id).ok()
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use messaging::{Envelope, EventContext, TraceParent};

    use super::*;

    fn delivery(payload: Vec<u8>, properties: BasicProperties) -> Delivery {
        let mut delivery = Delivery::mock(
            1,
            "events_exchange".into(),
            PaymentProcessed::ROUTING_KEY.into(),
            false,
            payload,
        );
        delivery.properties = properties;
        delivery
    }

    fn payment_processed(user_id: &str) -> Envelope {
        let event = PaymentProcessed {
            user_id: user_id.into(),
            ..PaymentProcessed::default()
        };
        let context = EventContext {
            correlation_id: "req-1".into(),
            causation_id: "req-1".into(),
            traceparent: TraceParent::new_root(),
        };
        Envelope::new(&event, &context)
    }

    #[test]
    fn a_payment_processed_names_its_user() {
        let user = Uuid::new_v4();
        let envelope = payment_processed(&user.to_string());
        let sent = delivery(
            envelope.payload.clone(),
            envelope.properties("payment-service"),
        );
        assert_eq!(user_of(&sent), Some(user));
    }

    #[test]
    fn what_is_not_a_payment_processed_with_a_user_names_nobody() {
        let user = Uuid::new_v4().to_string();
        let good = payment_processed(&user);
        let properties = good.properties("payment-service");
        let cases = [
            delivery(good.payload.clone(), BasicProperties::default()),
            delivery(
                good.payload.clone(),
                properties.clone().with_type("user.v1.UserCreated".into()),
            ),
            delivery(vec![0xff, 0xff, 0xff], properties.clone()),
            delivery(payment_processed("not-a-uuid").payload, properties.clone()),
            delivery(payment_processed("").payload, properties),
        ];
        for case in cases {
            assert_eq!(user_of(&case), None, "{case:?}");
        }
    }
}
