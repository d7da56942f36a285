//! The outbox under broker trouble: CreateUser works while RabbitMQ is unreachable and the event
//! goes out when it is back; a relay that dies between publish and delete loses nothing and
//! re-publishes under the same `message_id`.

use std::time::Duration;

use messaging::outbox;
use prost::Message;
use proto::user::v1::UserCreated;
use tonic_health::pb::health_check_response::ServingStatus;

use test_support::{
    assert_no_more_deliveries, broker_url_at, eventually, next_delivery, open_broker_proxy,
    unused_port,
};

use crate::helpers::{Relay, spawn_app_with_broker};

/// How often Postgres has vacuumed the outbox (by hand or by the relay).
async fn outbox_vacuums(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("select vacuum_count from pg_stat_user_tables where relname = 'outbox'")
        .fetch_one(db)
        .await
        .expect("outbox stats")
}

#[tokio::test]
async fn create_user_succeeds_while_the_broker_is_unreachable_and_publishes_once_it_is_back() {
    // Arrange: the service's broker address has nothing behind it yet.
    let port = unused_port();
    let app = spawn_app_with_broker(&broker_url_at(port)).await;
    let mut events = app.capture("user_created").await;
    assert_eq!(app.health().await, ServingStatus::NotServing);

    // Act
    let user = app
        .create_user("ada@example.com", "Ada")
        .await
        .expect("CreateUser does not need the broker")
        .user
        .expect("a user");

    // Assert: the event waits in the outbox.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.outbox_rows().await, 1);
    assert_no_more_deliveries(&mut events, Duration::from_millis(100)).await;

    // Act: the broker becomes reachable.
    let _proxy = open_broker_proxy(port).await;

    // Assert: the service reconnects by itself, publishes, and empties its outbox.
    let delivery = next_delivery(&mut events).await;
    let event = UserCreated::decode(delivery.data.as_slice()).expect("a UserCreated");
    assert_eq!(event.user_id, user.user_id);
    eventually(|| async { app.outbox_rows().await == 0 }).await;
    app.wait_for_health(ServingStatus::Serving).await;
    assert_no_more_deliveries(&mut events, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_relay_killed_between_publish_and_delete_republishes_with_the_same_message_id() {
    // Arrange: the service cannot reach the broker, so its own relay stays idle for now.
    let port = unused_port();
    let app = spawn_app_with_broker(&broker_url_at(port)).await;
    let mut events = app.capture("user_created").await;
    app.create_user("ada@example.com", "Ada")
        .await
        .expect("created");
    assert_eq!(app.outbox_rows().await, 1);

    // Act: a relay claims the row and publishes it, then dies before deleting it and
    // committing (its transaction is rolled back, as when the process is killed).
    let publisher = test_support::publisher(&app.amqp, app.topology(), "user-service").await;
    let mut tx = app.db.begin().await.expect("begin");
    let claimed = outbox::claim_due(&mut tx, 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let outcomes = publisher.publish_batch(&claimed).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    drop(tx);

    let first = next_delivery(&mut events).await;
    assert_eq!(app.outbox_rows().await, 1, "the row survives the crash");

    // Act: the service's relay gets to the broker.
    let _proxy = open_broker_proxy(port).await;

    // Assert: the same event again, under the same message_id; then the row is gone.
    let second = next_delivery(&mut events).await;
    assert_eq!(
        second.properties.message_id(),
        first.properties.message_id()
    );
    assert_eq!(second.data, first.data);
    eventually(|| async { app.outbox_rows().await == 0 }).await;
    assert_no_more_deliveries(&mut events, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn the_relay_vacuums_the_outbox_after_deleting_enough_rows() {
    // Arrange: six events wait in the outbox; the service's own relay has no broker to reach.
    let app = spawn_app_with_broker(&broker_url_at(unused_port())).await;
    for i in 0..6 {
        app.create_user(&format!("user{i}@example.com"), "User")
            .await
            .expect("created");
    }
    let before = outbox_vacuums(&app.db).await;

    // Act: a relay with a broker, vacuuming after every five deleted rows.
    let relay = Relay::start(&app, |relay| relay.with_vacuum_after(5));

    // Assert: the rows are published and deleted, and the outbox was vacuumed.
    eventually(|| async { app.outbox_rows().await == 0 }).await;
    eventually(|| async { outbox_vacuums(&app.db).await > before }).await;
    relay.stop().await;
}
