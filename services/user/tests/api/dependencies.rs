//! What callers and health see while a dependency stalls or is down: health notices a stalled
//! broker within two heartbeats, and CreateUser answers UNAVAILABLE within about a second while
//! Postgres is down, never at the caller's deadline.

use std::time::Duration;

use proto::user::v1::CreateUserRequest;
use test_support::{PrivatePostgres, Sandbox, eventually, eventually_within};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{spawn_app_in, spawn_app_with};

const HEARTBEAT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn health_says_not_serving_within_two_heartbeats_of_a_stalled_broker_and_serving_after() {
    // Arrange: the service reaches the broker through a proxy that can stall the network.
    let proxy = test_support::shared_broker_proxy().await;
    let app = spawn_app_with(&proxy.url(), |settings| settings.amqp_heartbeat = HEARTBEAT).await;
    app.wait_for_health(ServingStatus::Serving).await;

    // Act: no byte goes through any more, but no connection closes.
    proxy.blackhole(true);

    // Assert
    eventually_within(2 * HEARTBEAT, || async {
        app.health().await == ServingStatus::NotServing
    })
    .await;

    // Act: the network recovers.
    proxy.blackhole(false);

    // Assert: serving again, and events flow.
    app.wait_for_health(ServingStatus::Serving).await;
    app.create_user("ada@example.com", "Ada")
        .await
        .expect("created");
    eventually(|| async { app.outbox_rows().await == 0 }).await;
}

#[tokio::test]
async fn create_user_answers_unavailable_within_a_second_while_postgres_is_down() {
    // Arrange
    let mut postgres = PrivatePostgres::start().await;
    let app = spawn_app_in(
        Sandbox::on_postgres(&postgres.url()),
        &test_support::broker_url(),
        |_| {},
    )
    .await;
    app.wait_for_health(ServingStatus::Serving).await;

    // Act: Postgres stops at once, as after a crash.
    postgres.stop_immediately();

    // Assert: from the first call on, each gets UNAVAILABLE well before a 2-second deadline:
    // first after the pool's one-second wait for a connection, then at once from the gate.
    for i in 0..6 {
        let mut request = tonic::Request::new(CreateUserRequest {
            email: format!("user{i}@example.com"),
            name: "User".into(),
            ..CreateUserRequest::default()
        });
        request.set_timeout(Duration::from_secs(2));
        let status = app
            .client
            .clone()
            .create_user(request)
            .await
            .expect_err("the database is down");
        assert_eq!(status.code(), Code::Unavailable, "call {i}: {status:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Act and assert: back, and it works again without a restart.
    postgres.start_again().await;
    eventually(|| async { app.create_user("ada@example.com", "Ada").await.is_ok() }).await;
}
