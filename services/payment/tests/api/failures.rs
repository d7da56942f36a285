//! Failure handling of the payment consumer: bounded retries with back-off, dead letters that
//! say what failed.

use lapin::message::Delivery;
use messaging::{
    retry::{
        ATTEMPTS_HEADER, CONSUMER_HEADER, FAILURE_KIND_HEADER, FAILURE_MESSAGE_HEADER,
        FIRST_FAILURE_HEADER, LAST_FAILURE_HEADER, ORIGINAL_EXCHANGE_HEADER,
        ORIGINAL_ROUTING_KEY_HEADER, integer_header, text_header,
    },
    topology::PAYMENT_SERVICE_ORDER_CREATED,
};
use payment_service::gateway::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway};
use proto::payment::v1::PaymentStatus;
use test_support::eventually_some;

use crate::helpers::{order_created, spawn_app, spawn_app_with_gateway};

/// A gateway that always times out.
struct AlwaysTimesOut;

impl PaymentGateway for AlwaysTimesOut {
    async fn charge(&self, _: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        Err(GatewayError::Transient("simulated timeout".into()))
    }
}

fn text(delivery: &Delivery, name: &str) -> String {
    text_header(&delivery.properties, name).unwrap_or_else(|| panic!("header {name}"))
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_at_once_with_what_failed_where_and_when() {
    // Arrange
    let app = spawn_app().await;
    let (_, envelope) = order_created("ada+fail@example.com");
    let dlq = app
        .topology()
        .dead_letter_queue(&PAYMENT_SERVICE_ORDER_CREATED);

    // Act
    app.publish(&envelope).await;

    // Assert
    let dead = eventually_some(|| test_support::take_message(&app.amqp, &dlq)).await;
    assert_eq!(
        dead.properties.message_id().as_ref().map(|m| m.to_string()),
        Some(envelope.message_id.to_string()),
        "the dead letter keeps its message_id"
    );
    assert_eq!(dead.data, envelope.payload);
    assert_eq!(text(&dead, FAILURE_KIND_HEADER), "permanent");
    assert!(text(&dead, FAILURE_MESSAGE_HEADER).contains("simulated processing error"));
    assert_eq!(integer_header(&dead.properties, ATTEMPTS_HEADER), Some(1));
    assert_eq!(text(&dead, CONSUMER_HEADER), "payment_service");
    assert_eq!(
        text(&dead, ORIGINAL_EXCHANGE_HEADER),
        app.topology().exchange()
    );
    assert_eq!(text(&dead, ORIGINAL_ROUTING_KEY_HEADER), "order_created");
    let first = text(&dead, FIRST_FAILURE_HEADER);
    assert!(
        chrono::DateTime::parse_from_rfc3339(&first).is_ok(),
        "{first}"
    );
    assert_eq!(first, text(&dead, LAST_FAILURE_HEADER));
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_back_off_then_dead_lettered_when_retries_run_out() {
    // Arrange: three retry delays in tests, so the fourth failure is the last.
    let app = spawn_app_with_gateway(|_| AlwaysTimesOut).await;
    let (order, envelope) = order_created("ada@example.com");
    let dlq = app
        .topology()
        .dead_letter_queue(&PAYMENT_SERVICE_ORDER_CREATED);
    let started = std::time::Instant::now();

    // Act
    app.publish(&envelope).await;

    // Assert
    let dead = eventually_some(|| test_support::take_message(&app.amqp, &dlq)).await;
    assert_eq!(text(&dead, FAILURE_KIND_HEADER), "retries_exhausted");
    assert_eq!(integer_header(&dead.properties, ATTEMPTS_HEADER), Some(4));
    assert!(text(&dead, FAILURE_MESSAGE_HEADER).contains("simulated timeout"));
    assert_eq!(text(&dead, ORIGINAL_ROUTING_KEY_HEADER), "order_created");
    assert_ne!(
        text(&dead, FIRST_FAILURE_HEADER),
        text(&dead, LAST_FAILURE_HEADER)
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(700),
        "the retries waited 100 + 200 + 400 ms"
    );
    // The intent stays, without an outcome: a replay of the dead letter resumes it.
    let payments = app.payments_of_order(&order.order_id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status(), PaymentStatus::Processing);
    assert!(payments[0].process_time.is_none());
}
