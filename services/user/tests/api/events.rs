//! `user_created` on the wire: one event per user, every AMQP property of the event contract (README, Events on RabbitMQ), and nothing
//! leaves the outbox until the broker has taken it.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use messaging::{TraceParent, topology::SUBSCRIPTIONS};
use prost::Message;
use proto::user::v1::{CreateUserRequest, UserCreated};
use uuid::Uuid;

use test_support::{assert_no_more_deliveries, eventually, next_delivery};

use crate::helpers::spawn_app;

fn long_string_header(headers: &FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(value)) => {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        }
        other => panic!("header {name} should be an AMQP long string, got {other:?}"),
    }
}

#[tokio::test]
async fn create_user_publishes_exactly_one_user_created_with_every_property() {
    // Arrange
    let app = spawn_app().await;
    let mut events = app.capture("user_created").await;
    let client_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // Act
    let mut request = tonic::Request::new(CreateUserRequest {
        email: "ada@example.com".into(),
        name: "Ada".into(),
        ..CreateUserRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-ada-1".parse().expect("ascii"));
    request
        .metadata_mut()
        .insert("traceparent", client_trace.parse().expect("ascii"));
    let response = app
        .client
        .clone()
        .create_user(request)
        .await
        .expect("created");
    let delivery = next_delivery(&mut events).await;

    // Assert: the response echoes the request id.
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-ada-1")
    );
    let user = response.into_inner().user.expect("a user");

    // Assert: the payload is the same user.
    let event = UserCreated::decode(delivery.data.as_slice()).expect("a UserCreated payload");
    assert_eq!(event.user_id, user.user_id);
    assert_eq!(event.email, user.email);
    assert_eq!(event.name, user.name);
    assert_eq!(event.plan, user.plan);
    assert_eq!(event.create_time, user.create_time);

    // Assert: every property and header of the contract.
    let properties = &delivery.properties;
    let message_id = properties
        .message_id()
        .as_ref()
        .expect("message_id")
        .to_string();
    assert!(
        Uuid::parse_str(&message_id).is_ok(),
        "message_id {message_id} is a UUID"
    );
    assert_eq!(
        properties.kind().as_ref().map(|v| v.as_str()),
        Some("user.v1.UserCreated")
    );
    assert_eq!(
        properties.content_type().as_ref().map(|v| v.as_str()),
        Some("application/protobuf")
    );
    assert_eq!(
        properties.correlation_id().as_ref().map(|v| v.as_str()),
        Some("req-ada-1")
    );
    assert_eq!(
        properties.app_id().as_ref().map(|v| v.as_str()),
        Some("user-service")
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    let sent_at = properties.timestamp().expect("timestamp");
    let now = chrono::Utc::now().timestamp().unsigned_abs();
    assert!(
        now.abs_diff(sent_at) < 60,
        "timestamp {sent_at} is about now ({now})"
    );
    let headers = properties.headers().as_ref().expect("headers");
    assert_eq!(long_string_header(headers, "causation_id"), "req-ada-1");
    let traceparent = TraceParent::parse(&long_string_header(headers, "traceparent"))
        .expect("a valid traceparent");
    assert_eq!(traceparent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(delivery.routing_key.as_str(), "user_created");

    assert_no_more_deliveries(&mut events, Duration::from_millis(500)).await;
    eventually(|| async { app.outbox_rows().await == 0 }).await;
}

#[tokio::test]
async fn a_call_without_x_request_id_gets_one_generated_and_echoed() {
    let app = spawn_app().await;
    let mut events = app.capture("user_created").await;

    let response = app
        .client
        .clone()
        .create_user(CreateUserRequest {
            email: "ada@example.com".into(),
            name: "Ada".into(),
            ..CreateUserRequest::default()
        })
        .await
        .expect("created");
    let delivery = next_delivery(&mut events).await;

    let generated = response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a generated x-request-id")
        .to_owned();
    assert!(Uuid::parse_str(&generated).is_ok());
    assert_eq!(
        delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|v| v.to_string()),
        Some(generated)
    );
}

#[tokio::test]
async fn rejected_and_replayed_calls_publish_nothing_more() {
    let app = spawn_app().await;
    let mut events = app.capture("user_created").await;
    let create = CreateUserRequest {
        email: "ada@example.com".into(),
        name: "Ada".into(),
        request_id: Uuid::new_v4().to_string(),
        ..CreateUserRequest::default()
    };
    app.client
        .clone()
        .create_user(create.clone())
        .await
        .expect("created");

    app.client
        .clone()
        .create_user(create)
        .await
        .expect("replayed");
    app.create_user("ADA@example.com", "Ada again")
        .await
        .expect_err("duplicate");
    app.create_user("", "").await.expect_err("invalid");

    next_delivery(&mut events).await;
    assert_no_more_deliveries(&mut events, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_unroutable_event_stays_in_the_outbox_until_a_queue_is_bound() {
    // Arrange: nothing is bound to user_created in this namespace.
    let app = spawn_app().await;
    assert_eq!(SUBSCRIPTIONS[0].routing_key, "user_created");
    app.route_user_created(false).await;

    // Act
    app.create_user("ada@example.com", "Ada")
        .await
        .expect("created");

    // Assert: the broker returned it, so the row stays, marked with the failure.
    eventually(|| async {
        let attempts: i32 = sqlx::query_scalar("select coalesce(max(attempts), 0) from outbox")
            .fetch_one(&app.db)
            .await
            .expect("query");
        attempts >= 1
    })
    .await;
    assert_eq!(app.outbox_rows().await, 1);
    let last_error: String = sqlx::query_scalar("select last_error from outbox")
        .fetch_one(&app.db)
        .await
        .expect("query");
    assert!(last_error.contains("returned"), "{last_error}");

    // Act: a consumer's queue appears.
    let mut events = app.capture("user_created").await;
    app.route_user_created(true).await;

    // Assert: the retry delivers it, and the row goes.
    let delivery = next_delivery(&mut events).await;
    assert_eq!(
        delivery.properties.kind().as_ref().map(|v| v.as_str()),
        Some("user.v1.UserCreated")
    );
    eventually(|| async { app.outbox_rows().await == 0 }).await;
}

#[tokio::test]
async fn an_outbox_row_that_failed_thousands_of_times_is_still_rescheduled_and_delivered() {
    // Arrange: an unroutable event whose row has failed 5,000 times (2^5000 s overflows).
    let app = spawn_app().await;
    app.route_user_created(false).await;
    app.create_user("ada@example.com", "Ada")
        .await
        .expect("created");
    let attempts = || async {
        sqlx::query_scalar::<_, i32>("select coalesce(max(attempts), 0) from outbox")
            .fetch_one(&app.db)
            .await
            .expect("query")
    };
    eventually(|| async { attempts().await >= 1 }).await;
    sqlx::query("update outbox set attempts = 5000, next_attempt_at = now()")
        .execute(&app.db)
        .await
        .expect("update");

    // Act / Assert: the relay's next failure is recorded (the pass does not roll back) …
    eventually(|| async { attempts().await > 5000 }).await;

    // … with a back-off capped like any other (30 s) …
    let wait: f64 = sqlx::query_scalar(
        "select extract(epoch from next_attempt_at - now())::float8 from outbox",
    )
    .fetch_one(&app.db)
    .await
    .expect("query");
    assert!(wait <= 30.0, "{wait}");

    // … and once a queue is bound and its time comes, the row is delivered.
    let mut events = app.capture("user_created").await;
    app.route_user_created(true).await;
    sqlx::query("update outbox set next_attempt_at = now()")
        .execute(&app.db)
        .await
        .expect("update");
    next_delivery(&mut events).await;
    eventually(|| async { app.outbox_rows().await == 0 }).await;
}
