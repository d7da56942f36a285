//! The server's limits: calls beyond the concurrency limit are shed at once, a call past the
//! request timeout ends, and a message bigger than the API needs is refused, each with a gRPC
//! status. A call is held in flight for real: a transaction of the test's own holds an
//! uncommitted user with the same e-mail, so the service's insert waits on the unique index.
//!
//! HTTP/2 keepalive is configured from settings (parsed in service-kit's unit tests); that the
//! server then pings an idle connection is not observable through tonic's client, so it is not
//! tested here.

use std::time::{Duration, Instant};

use proto::user::v1::{CreateUserRequest, GetUserRequest};
use sqlx::{Postgres, Transaction};
use test_support::{PATIENCE, eventually};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// Inserts a user with `email` in a transaction left open: a CreateUser with that address waits
/// until the transaction ends.
async fn hold_email(app: &TestApp, email: &str) -> Transaction<'static, Postgres> {
    let mut held = app.db.begin().await.expect("a transaction");
    sqlx::query(
        "insert into users (user_id, email, name, plan) values ($1, $2, 'Holder', 'basic')",
    )
    .bind(Uuid::new_v4())
    .bind(email)
    .execute(&mut *held)
    .await
    .expect("the holding insert");
    held
}

/// Waits until a statement of the service waits on a lock in its database.
async fn wait_for_a_blocked_statement(app: &TestApp) {
    eventually(|| async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&app.db)
        .await
        .expect("pg_stat_activity")
            > 0
    })
    .await;
}

fn create_request(email: &str, name: &str) -> CreateUserRequest {
    CreateUserRequest {
        email: email.into(),
        name: name.into(),
        ..CreateUserRequest::default()
    }
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_at_once_with_resource_exhausted() {
    // Arrange: a limit of one call, taken by a CreateUser that waits on a held row.
    let app = spawn_app_with(&test_support::broker_url(), |settings| {
        settings.grpc.concurrency_limit = 1;
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    let held = hold_email(&app, "held@example.com").await;
    let in_flight = tokio::spawn({
        let mut client = app.client.clone();
        async move {
            client
                .create_user(create_request("held@example.com", "Waiting"))
                .await
        }
    });
    wait_for_a_blocked_statement(&app).await;

    // Act
    let started = Instant::now();
    let shed = app
        .client
        .clone()
        .get_user(GetUserRequest {
            user_id: Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("no room for a second call");
    let shed_after = started.elapsed();
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health is never shed: a busy service is not a dead one")
        .into_inner();

    // Assert: refused at once, not queued behind the call in flight.
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(shed_after < Duration::from_secs(1), "took {shed_after:?}");
    assert_eq!(health.status(), ServingStatus::Serving);
    held.rollback().await.expect("rollback");
    tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the held call ends")
        .expect("the task ends")
        .expect("the held call succeeds once the row is gone");
    let status = app
        .client
        .clone()
        .get_user(GetUserRequest {
            user_id: Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown user");
    assert_eq!(status.code(), Code::NotFound, "the permit came back");
}

#[tokio::test]
async fn a_call_running_past_the_request_timeout_ends_with_deadline_exceeded() {
    // Arrange
    let app = spawn_app_with(&test_support::broker_url(), |settings| {
        settings.grpc.request_timeout = Duration::from_millis(500);
    })
    .await;
    app.wait_for_health(ServingStatus::Serving).await;
    let held = hold_email(&app, "held@example.com").await;

    // Act
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        app.create_user("held@example.com", "Late"),
    )
    .await
    .expect("the server ends the call itself");

    // Assert
    let status = outcome.expect_err("timed out");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The call was handed to the writer before it timed out: like any call that ends with
    // DEADLINE_EXCEEDED, it may still take effect (a retry with a request_id gets its user).
    held.rollback().await.expect("rollback");
    eventually(|| async { app.user_rows().await == 1 }).await;
}

#[tokio::test]
async fn a_message_bigger_than_the_api_needs_is_refused_with_resource_exhausted() {
    // Arrange: the biggest valid CreateUser, about 1 kB: a 254-byte address, 200 four-byte
    // characters of name and a request id.
    let app = spawn_app().await;
    let email = format!(
        "{}@{}.{}.{}.com",
        "a".repeat(64),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(57)
    );
    assert_eq!(email.len(), 254);
    let biggest = CreateUserRequest {
        email,
        name: "\u{1d518}".repeat(200),
        request_id: Uuid::new_v4().to_string(),
        ..CreateUserRequest::default()
    };

    // Act
    let valid = app.client.clone().create_user(biggest).await;
    let mut refused = Vec::new();
    // Over the server's limit, and over tonic's own default (4 MiB, answered OUT_OF_RANGE).
    for size in [100 * 1024, 5 * 1024 * 1024] {
        let status = app
            .create_user("big@example.com", &"x".repeat(size))
            .await
            .expect_err("too big");
        refused.push((size, status.code(), status.message().to_owned()));
    }

    // Assert
    valid.expect("the biggest valid request fits");
    for (size, code, message) in refused {
        assert_eq!(code, Code::ResourceExhausted, "{size} bytes: {message}");
    }
    assert_eq!(app.user_rows().await, 1);
}
