//! CreateUser to a settled order, seen through the read APIs and on the wire.

use std::time::Duration;

use lapin::{message::Delivery, types::AMQPValue};
use proto::{order::v1::OrderStatus, payment::v1::PaymentStatus, user::v1::CreateUserRequest};
use test_support::next_delivery;

use crate::helpers::{Stack, spawn_stack};

fn correlation_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string())
}

fn causation_id(delivery: &Delivery) -> Option<String> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get("causation_id")?
    {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        _ => None,
    }
}

fn message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.to_string())
}

#[tokio::test]
async fn create_user_leads_to_a_paid_order_and_a_succeeded_payment() {
    // Arrange
    let stack = spawn_stack().await;

    // Act
    let user = stack.create_user("ada@example.com").await;

    // Assert
    let order = stack
        .wait_for_order_status(&user.user_id, OrderStatus::Paid)
        .await;
    assert_eq!(order.amount_minor, 999);
    let payments = stack.payments_of(&user.user_id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status(), PaymentStatus::Succeeded);
    assert_eq!(payments[0].order_id, order.order_id);
    assert_eq!(stack.orders_of(&user.user_id).await.len(), 1);
}

#[tokio::test]
async fn a_declined_card_leads_to_payment_declined() {
    let stack = spawn_stack().await;

    let user = stack.create_user("ada+decline@example.com").await;

    let order = stack
        .wait_for_order_status(&user.user_id, OrderStatus::PaymentDeclined)
        .await;
    let payments = stack.payments_of(&user.user_id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status(), PaymentStatus::Declined);
    assert_eq!(payments[0].decline_reason, "card_declined");
    assert_eq!(payments[0].order_id, order.order_id);
}

#[tokio::test]
async fn every_hop_carries_the_request_id_as_correlation_and_its_cause_as_causation() {
    // Arrange
    let stack = spawn_stack().await;
    let topology = &stack.sandbox.topology;
    let mut user_created = test_support::capture(&stack.amqp, topology, "user_created").await;
    let mut order_created = test_support::capture(&stack.amqp, topology, "order_created").await;
    let mut payment_processed =
        test_support::capture(&stack.amqp, topology, "payment_processed").await;

    // Act
    let mut request = tonic::Request::new(CreateUserRequest {
        email: "ada@example.com".into(),
        name: "Ada".into(),
        ..CreateUserRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "flow-42".parse().expect("ascii"));
    stack
        .users
        .clone()
        .create_user(request)
        .await
        .expect("created");

    // Assert
    let first = next_delivery(&mut user_created).await;
    let second = next_delivery(&mut order_created).await;
    let third = next_delivery(&mut payment_processed).await;
    for hop in [&first, &second, &third] {
        assert_eq!(correlation_id(hop).as_deref(), Some("flow-42"));
    }
    assert_eq!(causation_id(&first).as_deref(), Some("flow-42"));
    assert_eq!(causation_id(&second), message_id(&first));
    assert_eq!(causation_id(&third), message_id(&second));
}

#[tokio::test]
async fn two_hundred_users_at_once_give_two_hundred_orders_and_payments_exactly_once() {
    // Arrange
    let stack = spawn_stack().await;
    const USERS: i64 = 200;

    // Act
    let users = stack.create_users_at_once(USERS).await;
    assert_eq!(users.len() as i64, USERS);

    // Assert
    stack.wait_for_paid_orders(USERS).await;
    assert_eq!(
        Stack::count(&stack.order_db, "select count(*) from orders").await,
        USERS
    );
    assert_eq!(
        Stack::count(
            &stack.payment_db,
            "select count(distinct order_id) from payments"
        )
        .await,
        USERS
    );
    assert_eq!(
        Stack::count(&stack.payment_db, "select count(*) from payments").await,
        USERS
    );
    assert_eq!(
        test_support::dead_letters(&stack.amqp, &stack.sandbox.topology).await,
        0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        Stack::count(&stack.payment_db, "select count(*) from payments").await,
        USERS
    );
}
