//! Talking to the broker directly: publishing events and poison messages as another service
//! would, and reading queue depths.

use lapin::{
    BasicProperties, Connection,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions},
};
use messaging::{
    Envelope, EventContext, Publisher, Topology, TraceParent, consumer::MAX_PAYLOAD_BYTES,
};
use uuid::Uuid;

/// A confirmed publisher to the namespace's events exchange, as the trusted test user.
pub async fn publisher(amqp: &Connection, topology: &Topology, app_id: &str) -> Publisher {
    Publisher::open(
        amqp,
        topology.exchange(),
        app_id.to_owned(),
        crate::broker_user(),
    )
    .await
    .expect("a publisher")
}

/// Publishes `envelope` to the namespace's events exchange with confirms, as its producer would.
pub async fn publish(amqp: &Connection, topology: &Topology, app_id: &str, envelope: &Envelope) {
    publisher(amqp, topology, app_id)
        .await
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

/// Poison: random bytes, an empty body, a wrong `type`, no `message_id`, and a
/// body over the size limit, each typed as `type_name` unless the type is the poison, and each
/// from the trusted test user (an untrusted producer's message is not even decoded). An empty
/// body is a valid, empty protobuf message: it decodes, and the handler rejects its missing ids
/// as a permanent failure; the rest do not decode.
pub fn poison(type_name: &str) -> Vec<(&'static str, Vec<u8>, BasicProperties)> {
    let trusted = || BasicProperties::default().with_user_id(crate::broker_user().into());
    let good = |kind: &str| {
        trusted()
            .with_message_id(Uuid::new_v4().to_string().into())
            .with_type(kind.into())
            .with_content_type("application/protobuf".into())
    };
    vec![
        (
            "random bytes",
            vec![0xff, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x01],
            good(type_name),
        ),
        ("empty body", Vec::new(), good(type_name)),
        (
            "wrong type",
            b"\x0a\x03abc".to_vec(),
            good("acme.v1.Unknown"),
        ),
        (
            "missing message_id",
            b"\x0a\x03abc".to_vec(),
            trusted().with_type(type_name.into()),
        ),
        (
            "over the size limit",
            vec![0x0a; MAX_PAYLOAD_BYTES + 1],
            good(type_name),
        ),
    ]
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
    let state = messaging::topology::inspect(&channel, queue)
        .await
        .expect("a passive declaration")
        .expect("the queue exists");
    let _ = channel.close(200, "inspected".into()).await;
    state.messages
}

/// Messages in all of the namespace's dead-letter queues.
pub async fn dead_letters(amqp: &Connection, topology: &Topology) -> u32 {
    let mut total = 0;
    for subscription in messaging::topology::SUBSCRIPTIONS {
        total += queue_depth(amqp, &topology.dead_letter_queue(subscription)).await;
    }
    total
}
