//! Back-pressure by the flows in flight: a flow accepted holds its slot until the user service
//! sees its `payment_processed` (no order or payment service runs here: the test publishes what
//! they would), and no other message ends it; after the watcher subscribes again, the flows
//! accepted before no longer hold theirs.

use lapin::{BasicProperties, options::QueuePurgeOptions};
use messaging::{Envelope, topology::SUBSCRIPTIONS};
use proto::{Event, payment::v1::PaymentProcessed};
use tonic::Code;
use user_service::settings::Ingress;
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app_with_ingress};

/// At most `limit` flows in flight.
fn limited(limit: u64) -> Ingress {
    Ingress {
        create_user_max_backlog: limit,
        ..Ingress::default()
    }
}

/// CreateUser for `email`: the new user's id, or `None` when refused by back-pressure.
async fn admitted(app: &TestApp, email: &str) -> Option<String> {
    match app.create_user(email, "Flow").await {
        Ok(response) => Some(response.user.expect("a user").user_id),
        Err(status) if status.code() == Code::ResourceExhausted => None,
        Err(status) => panic!("CreateUser failed: {status:?}"),
    }
}

/// Empties the work queues, as their consumers would: what waits there is the floor of the
/// backlog, and here no consumer takes it.
async fn consume_work_queues(app: &TestApp) {
    let channel = app.amqp.create_channel().await.expect("a channel");
    for subscription in SUBSCRIPTIONS {
        channel
            .queue_purge(
                app.topology().queue(subscription).into(),
                QueuePurgeOptions::default(),
            )
            .await
            .expect("purged");
    }
    let _ = channel.close(200, "purged".into()).await;
}

/// A `payment_processed` for `user_id`, as the payment service publishes it.
fn payment_processed(user_id: &str) -> Envelope {
    let event = PaymentProcessed {
        payment_id: Uuid::new_v4().to_string(),
        order_id: Uuid::new_v4().to_string(),
        user_id: user_id.into(),
        ..PaymentProcessed::default()
    };
    Envelope::new(&event, &test_support::new_context())
}

#[tokio::test]
async fn a_flow_holds_its_slot_until_a_trusted_payment_processed_of_its_user_is_seen() {
    // Arrange: two flows in flight, the limit (the work queues kept empty throughout, so that
    // only the flows in flight count).
    let app = spawn_app_with_ingress(&test_support::broker_url(), limited(2)).await;
    let first = admitted(&app, "first@example.com").await.expect("admitted");
    let second = admitted(&app, "second@example.com")
        .await
        .expect("admitted");
    assert_eq!(admitted(&app, "refused@example.com").await, None);

    // Act: what must not end the first flow (poison, another user's end, the first user's end
    // from an untrusted producer), then the second flow's end, until a call is admitted (the
    // watcher's queue may not be bound yet when the first messages go out). The watcher takes
    // them in order: once the third call is admitted, it has seen the others.
    let topology = app.topology().clone();
    let untrusted = payment_processed(&first);
    test_support::eventually_some(|| async {
        for (_, payload, properties) in test_support::poison(PaymentProcessed::TYPE_NAME) {
            test_support::publish_raw(
                &app.amqp,
                &topology,
                PaymentProcessed::ROUTING_KEY,
                &payload,
                properties,
            )
            .await;
        }
        let stranger = payment_processed(&Uuid::new_v4().to_string());
        test_support::publish(&app.amqp, &topology, "payment-service", &stranger).await;
        // Without a user_id, nobody vouches for it.
        let anonymous = BasicProperties::default()
            .with_message_id(untrusted.message_id.to_string().into())
            .with_type(PaymentProcessed::TYPE_NAME.into());
        test_support::publish_raw(
            &app.amqp,
            &topology,
            PaymentProcessed::ROUTING_KEY,
            &untrusted.payload,
            anonymous,
        )
        .await;
        let ended = payment_processed(&second);
        test_support::publish(&app.amqp, &topology, "payment-service", &ended).await;
        consume_work_queues(&app).await;
        admitted(&app, "third@example.com").await
    })
    .await;

    // Assert: the second flow's end made room for one flow, and the first still holds its slot.
    assert_eq!(admitted(&app, "fourth@example.com").await, None);
}

#[tokio::test]
async fn after_the_watcher_subscribes_again_the_flows_accepted_before_no_longer_hold_their_slots() {
    // Arrange: one flow in flight, the limit, through a proxy that can cut the connection (the
    // work queues kept empty, so that only the flows in flight count).
    let proxy = test_support::shared_broker_proxy().await;
    let app = spawn_app_with_ingress(&proxy.url(), limited(1)).await;
    admitted(&app, "first@example.com").await.expect("admitted");
    assert_eq!(admitted(&app, "refused@example.com").await, None);

    // Act: the connection is lost; the service connects again and watches again.
    proxy.cut();

    // Assert: the first flow's end may have gone by meanwhile: it no longer holds its slot.
    test_support::eventually(|| async {
        consume_work_queues(&app).await;
        admitted(&app, "second@example.com").await.is_some()
    })
    .await;
}
