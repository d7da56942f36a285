//! Batches applied at once, the way the consumer applies them (without a broker): the gateway's
//! answers of a whole batch recorded in one statement, and still each message's outcome what it
//! would be alone.

use std::sync::Arc;

use messaging::{
    Envelope, Handler, HandlerError, Incoming, topology::PAYMENT_SERVICE_ORDER_CREATED,
};
use payment_service::{
    domain::PaymentOutcome,
    gateway::{Latency, SimulatedGateway},
    handlers::{Charge, ChargeSettings, OrderCreatedHandler},
};
use prost::Message;
use proto::{order::v1::OrderCreated, payment::v1::PaymentProcessed};
use sqlx::PgPool;
use test_support::{Sandbox, Settled, apply_as_consumer, delivered};
use uuid::Uuid;

use crate::helpers::order_created;

use Settled::{Applied, Duplicate};

type Charges = OrderCreatedHandler<SimulatedGateway>;

/// The payment service's database, migrated, with no service running on it (what a batch writes
/// stays where the test can read it), and its handler, charging the simulator at once.
async fn payments_database(sandbox: &Sandbox) -> (PgPool, Charges) {
    let pool = sandbox
        .migrated_pool("payments", payment_service::migrator())
        .await;
    let gateway = SimulatedGateway::new(pool.clone(), Latency::NONE);
    let handler = OrderCreatedHandler::new(Arc::new(gateway), ChargeSettings::default());
    (pool, handler)
}

/// The handler's first step for `envelopes`, as the consumer runs it before the batch.
async fn prepare(
    pool: &PgPool,
    handler: &Charges,
    envelopes: &[&Envelope],
) -> (
    Vec<Incoming<OrderCreated>>,
    Vec<Result<Charge, HandlerError>>,
) {
    let messages: Vec<_> = envelopes.iter().map(|e| delivered(e)).collect();
    let refs: Vec<_> = messages.iter().collect();
    let prepared = handler.prepare(pool, &refs).await;
    (messages, prepared)
}

/// Applies `messages` as one batch, as the consumer does after the first step.
async fn apply(
    pool: &PgPool,
    handler: &Charges,
    messages: &[Incoming<OrderCreated>],
    prepared: &[Charge],
) -> Vec<Settled> {
    apply_as_consumer(
        pool,
        PAYMENT_SERVICE_ORDER_CREATED,
        handler,
        messages,
        prepared,
    )
    .await
}

/// Another `order_created` for the order of `envelope`, under a new message id.
fn resent(envelope: &Envelope) -> Envelope {
    let mut again = envelope.clone();
    again.message_id = Uuid::now_v7();
    again
}

fn answered(order: &OrderCreated, outcome: PaymentOutcome) -> Option<Charge> {
    Some(Charge::Answered {
        order_id: order.order_id.parse().expect("an order id"),
        outcome,
    })
}

fn declined() -> PaymentOutcome {
    PaymentOutcome::Declined {
        reason: "card_declined".into(),
    }
}

/// Every payment: (order id, status, decline reason), by order id.
async fn payments(pool: &PgPool) -> Vec<(String, String, Option<String>)> {
    let rows: Vec<(Uuid, String, Option<String>)> =
        sqlx::query_as("select order_id, status, decline_reason from payments order by order_id")
            .fetch_all(pool)
            .await
            .expect("payments");
    rows.into_iter()
        .map(|(order_id, status, reason)| (order_id.to_string(), status, reason))
        .collect()
}

/// Every `payment_processed` in the outbox: (the message that caused it, its order id, its
/// status), by causing message.
async fn payment_processed(pool: &PgPool) -> Vec<(String, String, i32)> {
    let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
        "select causation_id, routing_key, payload from outbox order by causation_id",
    )
    .fetch_all(pool)
    .await
    .expect("outbox rows");
    rows.into_iter()
        .map(|(causation, routing_key, payload)| {
            assert_eq!(routing_key, "payment_processed");
            let event = PaymentProcessed::decode(payload.as_slice()).expect("a PaymentProcessed");
            (causation, event.order_id, event.status)
        })
        .collect()
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

#[tokio::test]
async fn a_batch_of_order_created_records_each_answered_charge_once_and_announces_it_once() {
    // Arrange: an order paid before.
    let sandbox = Sandbox::new();
    let (pool, handler) = payments_database(&sandbox).await;
    let (done, done_envelope) = order_created("done@example.com");
    let (messages, prepared) = prepare(&pool, &handler, &[&done_envelope]).await;
    let prepared: Vec<_> = prepared.into_iter().map(|p| p.expect("charged")).collect();
    let settled = apply(&pool, &handler, &messages, &prepared).await;
    assert_eq!(settled, [Applied]);

    // Arrange: a batch with two new orders (one declined), a second message for one of them,
    // one for the order paid before, a malformed one, the first message again, and carol's
    // order, which another delivery will record first.
    let (ada, ada_envelope) = order_created("ada@example.com");
    let (bob, bob_envelope) = order_created("bob+decline@example.com");
    let (carol, carol_envelope) = order_created("carol@example.com");
    let (mut malformed, _) = order_created("malformed@example.com");
    malformed.user_id = "not-a-uuid".into();
    let malformed = Envelope::new(&malformed, &test_support::new_context());
    let batch = [
        &ada_envelope,
        &malformed,
        &bob_envelope,
        &resent(&ada_envelope),
        &resent(&done_envelope),
        &ada_envelope,
        &carol_envelope,
    ];

    // Act: the first step. The malformed message fails there, alone; each order is charged
    // once, and a later message of an order gets the first's answer.
    let (messages, prepared) = prepare(&pool, &handler, &batch).await;
    assert!(matches!(prepared[1], Err(HandlerError::Permanent(_))));
    let charges: Vec<_> = prepared.iter().map(|p| p.as_ref().ok().cloned()).collect();
    assert_eq!(
        charges,
        [
            answered(&ada, PaymentOutcome::Succeeded),
            None,
            answered(&bob, declined()),
            answered(&ada, PaymentOutcome::Succeeded),
            Some(Charge::Recorded),
            answered(&ada, PaymentOutcome::Succeeded),
            answered(&carol, PaymentOutcome::Succeeded),
        ]
    );

    // Arrange: another delivery of carol's order, whose own first step got the same answer,
    // records her outcome before the batch commits.
    let carol_again = resent(&carol_envelope);
    let carol_charge = charges[6].clone().expect("carol's charge");
    let settled = apply(&pool, &handler, &[delivered(&carol_again)], &[carol_charge]).await;
    assert_eq!(settled, [Applied]);

    // Act: the batch, without the message its first step failed on (the consumer settles it
    // alone).
    let kept = [0, 2, 3, 4, 5, 6];
    let messages: Vec<_> = kept.iter().map(|&i| messages[i].clone()).collect();
    let prepared: Vec<_> = kept
        .iter()
        .map(|&i| charges[i].clone().expect("prepared"))
        .collect();
    let settled = apply(&pool, &handler, &messages, &prepared).await;

    // Assert: the second messages of an order had nothing to do but are applied; the first
    // message again is a duplicate.
    assert_eq!(
        settled,
        [Applied, Applied, Applied, Applied, Duplicate, Applied]
    );

    // Assert: one payment per order, with the gateway's answer.
    let succeeded = |order: &OrderCreated| (order.order_id.clone(), "succeeded".to_owned(), None);
    let expected = sorted(vec![
        succeeded(&done),
        succeeded(&ada),
        (
            bob.order_id.clone(),
            "declined".to_owned(),
            Some("card_declined".to_owned()),
        ),
        succeeded(&carol),
    ]);
    assert_eq!(payments(&pool).await, expected);

    // Assert: one payment_processed per outcome recorded, caused by the message that recorded it
    // (carol's by the other delivery).
    let event =
        |envelope: &Envelope, order: &OrderCreated, status: proto::payment::v1::PaymentStatus| {
            (
                envelope.message_id.to_string(),
                order.order_id.clone(),
                status as i32,
            )
        };
    use proto::payment::v1::PaymentStatus::{Declined, Succeeded};
    let expected = sorted(vec![
        event(&done_envelope, &done, Succeeded),
        event(&ada_envelope, &ada, Succeeded),
        event(&bob_envelope, &bob, Declined),
        event(&carol_again, &carol, Succeeded),
    ]);
    assert_eq!(payment_processed(&pool).await, expected);

    // Assert: the gateway heard of each order once.
    for order in [&done, &ada, &bob, &carol] {
        let order_id = order.order_id.parse().expect("an order id");
        let charges = payment_service::gateway::simulated_charges(&pool, order_id)
            .await
            .expect("the simulator's records");
        assert_eq!(charges.calls, 1, "{}", order.user_email);
    }
}

#[tokio::test]
async fn two_answers_for_one_order_in_one_batch_record_the_first_and_announce_it_once() {
    // Arrange: an order charged, and two messages for it in one batch, each with an answer (a
    // first step never hands out two for one order, but the statement must stay exact).
    let sandbox = Sandbox::new();
    let (pool, handler) = payments_database(&sandbox).await;
    let (order, envelope) = order_created("dave@example.com");
    let again = resent(&envelope);
    let (messages, prepared) = prepare(&pool, &handler, &[&envelope, &again]).await;
    let first = prepared[0].as_ref().ok().cloned();
    assert_eq!(first, answered(&order, PaymentOutcome::Succeeded));
    let prepared = [
        first.expect("an answer"),
        answered(&order, declined()).expect("an answer"),
    ];

    // Act
    let settled = apply(&pool, &handler, &messages, &prepared).await;

    // Assert
    assert_eq!(settled, [Applied, Applied]);
    assert_eq!(
        payments(&pool).await,
        [(order.order_id.clone(), "succeeded".to_owned(), None)]
    );
    assert_eq!(
        payment_processed(&pool).await,
        [(
            envelope.message_id.to_string(),
            order.order_id.clone(),
            proto::payment::v1::PaymentStatus::Succeeded as i32
        )]
    );
}

#[tokio::test]
async fn a_second_delivery_of_an_order_in_a_batch_shares_the_fate_of_the_first() {
    // Arrange: a message and its copy under the same message id, in one batch: the copy a retry
    // published before the original's ack was lost (a process killed, a connection cut). The
    // gateway fails the order's first charge transiently (`+flaky`).
    let sandbox = Sandbox::new();
    let (pool, handler) = payments_database(&sandbox).await;
    let (_, flaky) = order_created("flaky+flaky@example.com");

    // Act
    let (_, prepared) = prepare(&pool, &handler, &[&flaky, &flaky]).await;

    // Assert: the copy is not applied without the charge while the first is retried (its
    // inbox row would make the retry a duplicate, and the payment would stay processing).
    assert!(
        prepared
            .iter()
            .all(|charge| matches!(charge, Err(HandlerError::Transient(_)))),
        "{prepared:?}"
    );
}
