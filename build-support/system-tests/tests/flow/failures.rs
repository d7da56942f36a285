//! Poison messages and failing payments never block a queue: they reach the dead-letter queue
//! with their failure headers, and every consumer goes on.

use lapin::BasicProperties;
use messaging::{
    consumer::MAX_PAYLOAD_BYTES,
    retry::{FAILURE_KIND_HEADER, text_header},
    topology::SUBSCRIPTIONS,
};
use proto::{order::v1::OrderStatus, payment::v1::PaymentStatus};
use test_support::eventually_some;
use uuid::Uuid;

use crate::helpers::spawn_stack;

/// The poison of the issue: random bytes, an empty body, a wrong `type`, no `message_id`, and a
/// body over the size limit, each typed as `type_name` unless the type is the poison. An empty
/// body is a valid, empty protobuf message: it decodes, and the handler rejects its missing ids
/// as a permanent failure; the rest do not decode.
fn poison(type_name: &str) -> Vec<(&'static str, Vec<u8>, BasicProperties)> {
    let good = |kind: &str| {
        BasicProperties::default()
            .with_message_id(Uuid::new_v4().to_string().into())
            .with_type(kind.into())
            .with_content_type("application/protobuf".into())
    };
    vec![
        (
            "random bytes",
            vec![0xff, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x01],
            good(type_name),
        ),
        ("empty body", Vec::new(), good(type_name)),
        (
            "wrong type",
            b"\x0a\x03abc".to_vec(),
            good("acme.v1.Unknown"),
        ),
        (
            "missing message_id",
            b"\x0a\x03abc".to_vec(),
            BasicProperties::default().with_type(type_name.into()),
        ),
        (
            "over the size limit",
            vec![0x0a; MAX_PAYLOAD_BYTES + 1],
            good(type_name),
        ),
    ]
}

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
        for (_, payload, properties) in poison(type_name) {
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
    eventually_some(|| async {
        stack
            .orders_of(&user.user_id)
            .await
            .pop()
            .filter(|order| order.status() == OrderStatus::Paid)
    })
    .await;

    // Assert: every poison message is in its queue's DLQ, marked with why.
    for (subscription, _) in queues {
        let dlq = topology.dead_letter_queue(subscription);
        let mut kinds = Vec::new();
        for _ in poison("") {
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

    let order = eventually_some(|| async {
        stack
            .orders_of(&user.user_id)
            .await
            .pop()
            .filter(|order| order.status() == OrderStatus::Paid)
    })
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

    eventually_some(|| async {
        stack
            .orders_of(&fine.user_id)
            .await
            .pop()
            .filter(|order| order.status() == OrderStatus::Paid)
    })
    .await;
    let dlq = stack.sandbox.topology.dead_letter_queue(&SUBSCRIPTIONS[1]);
    let dead = eventually_some(|| test_support::take_message(&stack.amqp, &dlq)).await;
    assert_eq!(
        text_header(&dead.properties, FAILURE_KIND_HEADER).as_deref(),
        Some("permanent")
    );
    let orders = stack.orders_of(&failing.user_id).await;
    assert_eq!(orders[0].status(), OrderStatus::PendingPayment);
    assert!(stack.payments_of(&failing.user_id).await.is_empty());
}
