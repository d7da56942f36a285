//! The queue type (`QUEUE_TYPE`): quorum queues by default, classic ones on request, and a
//! service that finds the other type in its way says which queue and what to do.

use messaging::{
    QueueType,
    topology::{DeclareError, SUBSCRIPTIONS},
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
