//! The queue type (`QUEUE_TYPE`): quorum queues by default, classic ones on request, and a
//! service that finds the other type in its way says which queue and what to do.

use lapin::{
    BasicProperties,
    options::{BasicGetOptions, BasicNackOptions},
    types::AMQPValue,
};
use messaging::{
    QueueType,
    queues::DELIVERY_LIMIT,
    topology::{DeclareError, ORDER_SERVICE_USER_CREATED, SUBSCRIPTIONS},
};
use test_support::Sandbox;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    helpers::{spawn_app, spawn_app_in},
    logged::LoggedService,
};

/// Declares `sandbox`'s topology as `queue_type`.
async fn declare(sandbox: &Sandbox, queue_type: QueueType) -> Result<(), DeclareError> {
    let amqp = test_support::broker().await;
    sandbox
        .topology
        .clone()
        .with_queue_type(queue_type)
        .declare(&amqp, SUBSCRIPTIONS)
        .await
}

#[tokio::test]
async fn the_service_declares_quorum_queues_by_default() {
    // Arrange
    let app = spawn_app().await;
    let as_classic = app.topology().clone().with_queue_type(QueueType::Classic);

    // Act: the same queues, declared as classic ones.
    let refused = as_classic
        .declare(&app.amqp, SUBSCRIPTIONS)
        .await
        .expect_err("the broker holds them as quorum queues");

    // Assert
    let DeclareError::Inequivalent(refused) = refused else {
        panic!("not refused for their type: {refused}");
    };
    assert_eq!(
        refused.queue,
        app.topology().dead_letter_queue(&SUBSCRIPTIONS[0])
    );
    assert!(
        refused.to_string().contains("It is a quorum queue"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_service_that_finds_classic_queues_names_them_and_waits_not_serving() {
    // Arrange: the namespace holds the classic queues of an earlier deployment.
    let sandbox = Sandbox::new();
    declare(&sandbox, QueueType::Classic)
        .await
        .expect("classic queues");
    let dlq = sandbox.topology.dead_letter_queue(&SUBSCRIPTIONS[0]);

    // Act
    let service = LoggedService::spawn(sandbox, &[("LOG_FORMAT", "text")]).await;

    // Assert: the log names the queue and what to do; health is not SERVING.
    let log = service
        .wait_for_log("cannot declare the topology; retrying")
        .await;
    let line = log
        .lines()
        .find(|line| line.contains("cannot declare the topology"))
        .expect("the line");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&format!("queue \"{dlq}\"")), "{line}");
    assert!(line.contains("set QUEUE_TYPE=classic"), "{line}");
    assert!(line.contains("Migrating to quorum queues"), "{line}");
    assert_eq!(service.health().await, ServingStatus::NotServing);
}

#[tokio::test]
async fn with_queue_type_classic_a_service_uses_the_classic_queues_it_finds() {
    // Arrange
    let sandbox = Sandbox::new();
    declare(&sandbox, QueueType::Classic)
        .await
        .expect("classic queues");

    // Act
    let app = spawn_app_in(sandbox, &test_support::broker_url(), |settings| {
        settings.topology = settings
            .topology
            .clone()
            .with_queue_type(QueueType::Classic);
    })
    .await;

    // Assert: it serves, and publishes onto those queues.
    app.wait_for_health(ServingStatus::Serving).await;
    app.create_user("classic@example.com", "Ada")
        .await
        .expect("created");
    test_support::eventually(|| async { app.outbox_rows().await == 0 }).await;
}

#[tokio::test]
async fn a_message_returned_to_its_quorum_queue_past_the_delivery_limit_is_dead_lettered() {
    // Arrange: a message in a consumer queue.
    let sandbox = Sandbox::new();
    declare(&sandbox, QueueType::Quorum)
        .await
        .expect("quorum queues");
    let amqp = test_support::broker().await;
    let (queue, dlq) = (
        sandbox.topology.queue(&ORDER_SERVICE_USER_CREATED),
        sandbox
            .topology
            .dead_letter_queue(&ORDER_SERVICE_USER_CREATED),
    );
    test_support::publish_raw(
        &amqp,
        &sandbox.topology,
        ORDER_SERVICE_USER_CREATED.routing_key,
        b"returned every time",
        BasicProperties::default(),
    )
    .await;

    // Act: a consumer that hands it back every time it gets it.
    let channel = amqp.create_channel().await.expect("a channel");
    let mut deliveries = 0;
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        deliveries += 1;
        assert!(deliveries <= DELIVERY_LIMIT + 1, "never dead-lettered");
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
    }

    // Assert: past the limit, it waits in the dead-letter queue, saying why.
    assert!(deliveries >= DELIVERY_LIMIT, "{deliveries} deliveries");
    test_support::eventually(|| async { test_support::queue_depth(&amqp, &dlq).await == 1 }).await;
    let dead = test_support::take_message(&amqp, &dlq)
        .await
        .expect("the dead letter");
    let headers = dead.properties.headers().clone().expect("x-death");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("an empty x-death: {deaths:?}");
    };
    let Some(AMQPValue::LongString(reason)) = death.inner().get("reason") else {
        panic!("no reason: {death:?}");
    };
    assert_eq!(String::from_utf8_lossy(reason.as_bytes()), "delivery_limit");
}
