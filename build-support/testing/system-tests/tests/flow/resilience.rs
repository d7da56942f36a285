//! Exactly once with competing consumers, and "if a service is down, events are queued and
//! processed later".

use std::time::Duration;

use test_support::eventually;

use crate::helpers::{Stack, spawn_stack, spawn_stack_without_payment};

#[tokio::test]
async fn two_order_service_instances_on_the_same_queues_still_do_everything_once() {
    // Arrange
    let mut stack = spawn_stack().await;
    stack.start_another_order_service().await;
    const USERS: i64 = 100;

    // Act
    stack.create_users_at_once(USERS).await;

    // Assert
    stack.wait_for_paid_orders(USERS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        Stack::count(&stack.order_db, "select count(*) from orders").await,
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
}

#[tokio::test]
async fn users_created_while_the_payment_service_is_down_are_all_paid_once_it_starts() {
    // Arrange: no payment service yet.
    let mut stack = spawn_stack_without_payment().await;
    const USERS: i64 = 30;
    for i in 0..USERS {
        stack.create_user(&format!("user{i}@example.com")).await;
    }
    eventually(|| async {
        Stack::count(&stack.order_db, "select count(*) from orders").await == USERS
    })
    .await;
    let waiting = stack
        .sandbox
        .topology
        .queue(&messaging::topology::PAYMENT_SERVICE_ORDER_CREATED);
    eventually(|| async { test_support::queue_depth(&stack.amqp, &waiting).await == USERS as u32 })
        .await;

    // Act
    stack.start_payment_service().await;

    // Assert
    stack.wait_for_paid_orders(USERS).await;
    assert_eq!(
        Stack::count(&stack.payment_db, "select count(*) from payments").await,
        USERS
    );
    assert_eq!(test_support::queue_depth(&stack.amqp, &waiting).await, 0);
}
