//! Poison messages and failing payments never block a queue: they reach the dead-letter queue
//! with their failure headers, and every consumer goes on.

use messaging::{
    retry::{FAILURE_KIND_HEADER, text_header},
    topology::SUBSCRIPTIONS,
};
use proto::{order::v1::OrderStatus, payment::v1::PaymentStatus};
use test_support::eventually_some;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use clap::Parser;
use payment_service::gateway::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway};

use crate::helpers::{Stack, spawn_stack, spawn_stack_with_gateway};

#[tokio::test]
async fn poison_on_every_queue_is_dead_lettered_and_every_consumer_goes_on() {
    // Arrange
    let stack = spawn_stack().await;
    let topology = &stack.sandbox.topology;
    let queues = [
        (&SUBSCRIPTIONS[0], "user.v1.UserCreated"),
        (&SUBSCRIPTIONS[1], "order.v1.OrderCreated"),
        (&SUBSCRIPTIONS[2], "payment.v1.PaymentProcessed"),
    ];

    // Act: poison on each queue, then a real flow through all three.
    for (subscription, type_name) in queues {
        for (_, payload, properties) in test_support::poison(type_name) {
            test_support::publish_raw(
                &stack.amqp,
                topology,
                subscription.routing_key,
                &payload,
                properties,
            )
            .await;
        }
    }
    let user = stack.create_user("ada@example.com").await;

    // Assert: the flow completes.
    stack
        .wait_for_order_status(&user.user_id, OrderStatus::Paid)
        .await;

    // Assert: every poison message is in its queue's DLQ, marked with why.
    for (subscription, _) in queues {
        let dlq = topology.dead_letter_queue(subscription);
        let mut kinds = Vec::new();
        for _ in test_support::poison("") {
            let dead = eventually_some(|| test_support::take_message(&stack.amqp, &dlq)).await;
            kinds.push(text_header(&dead.properties, FAILURE_KIND_HEADER).unwrap_or_default());
        }
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "permanent",
                "undecodable",
                "undecodable",
                "undecodable",
                "undecodable"
            ],
            "{}",
            subscription.queue
        );
        assert_eq!(test_support::queue_depth(&stack.amqp, &dlq).await, 0);
    }
}

#[tokio::test]
async fn a_flaky_gateway_is_retried_and_the_user_pays_once() {
    let stack = spawn_stack().await;

    let user = stack.create_user("ada+flaky@example.com").await;

    let order = stack
        .wait_for_order_status(&user.user_id, OrderStatus::Paid)
        .await;
    let payments = stack.payments_of(&user.user_id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].order_id, order.order_id);
    assert_eq!(payments[0].status(), PaymentStatus::Succeeded);
    assert_eq!(
        test_support::dead_letters(&stack.amqp, &stack.sandbox.topology).await,
        0
    );
}

#[tokio::test]
async fn a_failing_payment_is_dead_lettered_and_later_users_still_pay() {
    let stack = spawn_stack().await;

    let failing = stack.create_user("ada+fail@example.com").await;
    let fine = stack.create_user("bob@example.com").await;

    stack
        .wait_for_order_status(&fine.user_id, OrderStatus::Paid)
        .await;
    let dlq = stack.sandbox.topology.dead_letter_queue(&SUBSCRIPTIONS[1]);
    let dead = eventually_some(|| test_support::take_message(&stack.amqp, &dlq)).await;
    assert_eq!(
        text_header(&dead.properties, FAILURE_KIND_HEADER).as_deref(),
        Some("permanent")
    );
    let orders = stack.orders_of(&failing.user_id).await;
    assert_eq!(orders[0].status(), OrderStatus::PendingPayment);
    // Its intent stays PROCESSING, and nothing was charged.
    let payments = stack.payments_of(&failing.user_id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status(), PaymentStatus::Processing);
}

/// A gateway that fails permanently until it is repaired, like a misconfigured account.
struct RepairableGateway {
    broken: Arc<AtomicBool>,
}

impl PaymentGateway for RepairableGateway {
    async fn charge(&self, _: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        if self.broken.load(Ordering::SeqCst) {
            Err(GatewayError::Permanent("merchant account suspended".into()))
        } else {
            Ok(ChargeOutcome::Succeeded)
        }
    }
}

async fn eventsctl(stack: &Stack, args: &[&str]) -> String {
    let namespace = stack.sandbox.topology.namespace().as_str().to_owned();
    let broker = test_support::broker_url();
    let mut argv = vec![
        "eventsctl",
        "--amqp-url",
        &broker,
        "--bus-namespace",
        &namespace,
    ];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    eventsctl::run(eventsctl::Cli::parse_from(argv), &mut out)
        .await
        .expect("eventsctl succeeds");
    String::from_utf8(out).expect("text")
}

#[tokio::test]
async fn replaying_a_dead_letter_whose_cause_was_fixed_completes_the_flow_once() {
    // Arrange: the gateway is broken, so the payment dead-letters.
    let broken = Arc::new(AtomicBool::new(true));
    let repairable = RepairableGateway {
        broken: broken.clone(),
    };
    let stack = spawn_stack_with_gateway(|_| repairable).await;
    let user = stack.create_user("ada@example.com").await;
    let dlq = stack.sandbox.topology.dead_letter_queue(&SUBSCRIPTIONS[1]);
    test_support::eventually(|| async { test_support::queue_depth(&stack.amqp, &dlq).await == 1 })
        .await;
    let listed = eventsctl(&stack, &["dlq", "list"]).await;
    assert!(
        listed.contains("order.v1.OrderCreated  permanent"),
        "{listed}"
    );

    // Act: repair the cause, then replay.
    broken.store(false, Ordering::SeqCst);
    let replayed = eventsctl(&stack, &["dlq", "replay"]).await;

    // Assert: the flow completes, once.
    assert!(replayed.contains("replayed 1 message(s)"), "{replayed}");
    stack
        .wait_for_order_status(&user.user_id, OrderStatus::Paid)
        .await;
    assert_eq!(stack.payments_of(&user.user_id).await.len(), 1);
    assert_eq!(test_support::queue_depth(&stack.amqp, &dlq).await, 0);

    // Act: replaying again finds nothing, and a duplicate changes nothing.
    let again = eventsctl(&stack, &["dlq", "replay"]).await;
    assert!(again.contains("replayed 0 message(s)"), "{again}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(stack.payments_of(&user.user_id).await.len(), 1);
}
