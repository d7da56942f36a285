//! The payment service's consumer: one payment per order through the simulated gateway.

use std::time::Duration;

use lapin::types::AMQPValue;
use messaging::topology::PAYMENT_SERVICE_ORDER_CREATED;
use prost::Message;
use proto::payment::v1::{PaymentProcessed, PaymentStatus};
use test_support::{assert_no_more_deliveries, eventually, next_delivery};

use crate::helpers::{order_created, spawn_app};

#[tokio::test]
async fn order_created_is_charged_once_and_announced() {
    // Arrange
    let app = spawn_app().await;
    let mut events = app.capture("payment_processed").await;
    let (order, envelope) = order_created("ada@example.com");

    // Act
    app.publish(&envelope).await;

    // Assert: the payment, through the read API.
    let payment = app.payment_of(&order.order_id).await;
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert_eq!(payment.user_id, order.user_id);
    assert_eq!(
        (payment.amount_minor, payment.currency.as_str()),
        (999, "USD")
    );
    assert!(payment.decline_reason.is_empty());

    // Assert: the event, in the same flow, caused by the order_created message.
    let delivery = next_delivery(&mut events).await;
    let event = PaymentProcessed::decode(delivery.data.as_slice()).expect("a PaymentProcessed");
    assert_eq!(event.payment_id, payment.payment_id);
    assert_eq!(event.order_id, order.order_id);
    assert_eq!(event.user_id, order.user_id);
    assert_eq!(event.status(), PaymentStatus::Succeeded);
    let properties = &delivery.properties;
    assert_eq!(
        properties.correlation_id().as_ref().map(|c| c.to_string()),
        Some(envelope.correlation_id.clone())
    );
    assert_eq!(
        properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("causation_id").cloned()),
        Some(AMQPValue::LongString(
            envelope.message_id.to_string().into()
        ))
    );
    assert_eq!(
        properties.app_id().as_ref().map(|a| a.as_str()),
        Some("payment-service")
    );
    assert_no_more_deliveries(&mut events, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_decline_customer_is_declined_with_card_declined() {
    let app = spawn_app().await;
    let mut events = app.capture("payment_processed").await;
    let (order, envelope) = order_created("ada+decline@example.com");

    app.publish(&envelope).await;

    let payment = app.payment_of(&order.order_id).await;
    assert_eq!(payment.status(), PaymentStatus::Declined);
    assert_eq!(payment.decline_reason, "card_declined");
    let event = PaymentProcessed::decode(next_delivery(&mut events).await.data.as_slice())
        .expect("a PaymentProcessed");
    assert_eq!(event.status(), PaymentStatus::Declined);
    assert_eq!(event.decline_reason, "card_declined");
}

#[tokio::test]
async fn a_duplicate_order_created_gives_one_payment() {
    // Arrange: the same message twice, and the same order under a new message id.
    let app = spawn_app().await;
    let mut events = app.capture("payment_processed").await;
    let (order, envelope) = order_created("ada@example.com");
    let mut resent = envelope.clone();
    resent.message_id = uuid::Uuid::now_v7();

    // Act: all three at once, so they race on parallel workers.
    let publisher = test_support::publisher(&app.amqp, app.topology(), "test").await;
    let outcomes = publisher
        .publish_batch(&[envelope.clone(), envelope, resent])
        .await;
    assert!(outcomes.iter().all(Result::is_ok));

    // Assert
    next_delivery(&mut events).await;
    assert_no_more_deliveries(&mut events, Duration::from_secs(1)).await;
    assert_eq!(app.payments_of_order(&order.order_id).await.len(), 1);
    assert_eq!(app.payment_rows().await, 1);
}

#[tokio::test]
async fn a_flaky_gateway_is_retried_until_it_succeeds_once() {
    let app = spawn_app().await;
    let mut events = app.capture("payment_processed").await;
    let (order, envelope) = order_created("ada+flaky@example.com");

    app.publish(&envelope).await;

    let payment = app.payment_of(&order.order_id).await;
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    next_delivery(&mut events).await;
    assert_no_more_deliveries(&mut events, Duration::from_millis(500)).await;
    assert_eq!(
        test_support::dead_letters(&app.amqp, app.topology()).await,
        0
    );
}

#[tokio::test]
async fn a_permanent_gateway_failure_goes_to_the_dead_letter_queue_and_the_consumer_goes_on() {
    // Arrange
    let app = spawn_app().await;
    let (failing, failing_envelope) = order_created("ada+fail@example.com");
    let (fine, fine_envelope) = order_created("bob@example.com");

    // Act
    app.publish(&failing_envelope).await;
    app.publish(&fine_envelope).await;

    // Assert
    app.payment_of(&fine.order_id).await;
    let dlq = app
        .topology()
        .dead_letter_queue(&PAYMENT_SERVICE_ORDER_CREATED);
    eventually(|| async { test_support::queue_depth(&app.amqp, &dlq).await == 1 }).await;
    let failing = app.payments_of_order(&failing.order_id).await;
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0].status(), PaymentStatus::Processing);
    assert_eq!(app.charges_of(&failing[0].order_id).await.successful, 0);
}
