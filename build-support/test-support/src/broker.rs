//! Talking to the broker directly: publishing events and poison messages as another service
//! would, and reading queue depths.

use lapin::{
    BasicProperties, Connection,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use messaging::{Envelope, EventContext, Publisher, Topology, TraceParent};
use uuid::Uuid;

/// Publishes `envelope` to the namespace's events exchange with confirms, as its producer would.
pub async fn publish(amqp: &Connection, topology: &Topology, app_id: &str, envelope: &Envelope) {
    let publisher = Publisher::open(amqp, topology.exchange(), app_id.to_owned())
        .await
        .expect("a publisher");
    publisher
        .publish(envelope)
        .await
        .expect("the broker takes the event");
}

/// Publishes any bytes with any properties under `routing_key`: for poison messages.
pub async fn publish_raw(
    amqp: &Connection,
    topology: &Topology,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) {
    let channel = amqp.create_channel().await.expect("a channel");
    channel
        .basic_publish(
            topology.exchange().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await
        .expect("publish");
    let _ = channel.close(200, "published".into()).await;
}

/// A fresh event context, as a new request would start.
pub fn new_context() -> EventContext {
    let id = Uuid::new_v4().to_string();
    EventContext {
        correlation_id: id.clone(),
        causation_id: id,
        traceparent: TraceParent::new_root(),
    }
}

/// Takes (gets and acks) the next message of `queue`, if there is one.
pub async fn take_message(amqp: &Connection, queue: &str) -> Option<lapin::message::Delivery> {
    let channel = amqp.create_channel().await.expect("a channel");
    let message = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")?;
    message
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let _ = channel.close(200, "taken".into()).await;
    Some(message.delivery)
}

/// Messages ready in `queue` now.
pub async fn queue_depth(amqp: &Connection, queue: &str) -> u32 {
    let channel = amqp.create_channel().await.expect("a channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    let _ = channel.close(200, "inspected".into()).await;
    declared.message_count()
}

/// Messages in all of the namespace's dead-letter queues.
pub async fn dead_letters(amqp: &Connection, topology: &Topology) -> u32 {
    let mut total = 0;
    for subscription in messaging::topology::SUBSCRIPTIONS {
        total += queue_depth(amqp, &topology.dead_letter_queue(subscription)).await;
    }
    total
}
