//! The charge as a recorded, resumable step: its intent committed before the gateway is called,
//! the gateway called outside any transaction with the order id as idempotency key, the outcome
//! recorded after; and never a second charge, whatever fails around it.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use messaging::topology::PAYMENT_SERVICE_ORDER_CREATED;
use payment_service::gateway::{
    ChargeOutcome, ChargeRequest, GatewayError, Latency, PaymentGateway, SimulatedGateway,
};
use proto::payment::v1::PaymentStatus;
use sqlx::PgPool;
use test_support::{Sandbox, eventually, next_delivery};
use uuid::Uuid;

use crate::helpers::{
    order_created, publish_before_start, simulator, spawn_app, spawn_app_in, spawn_app_with_gateway,
};

/// What the [`Observing`] gateway saw while it was called.
#[derive(Debug, Default)]
struct Seen {
    in_flight: usize,
    most_in_flight: usize,
    /// The payment's status in the database at each call.
    statuses: Vec<String>,
    /// At each call, open transactions of the service that hold a lock on `payments`.
    transactions_on_payments: Vec<i64>,
}

/// The simulator, watched: it records what the database says while it is called, answers
/// after a moment (so that calls can overlap) and, when asked, loses the answer of each key's
/// first call after the charge was made, as a timeout after the provider charged would.
struct Observing {
    simulator: SimulatedGateway,
    pool: PgPool,
    seen: Arc<Mutex<Seen>>,
    lose_first_answer: bool,
    answered: Mutex<HashSet<Uuid>>,
}

impl Observing {
    fn new(pool: PgPool, seen: Arc<Mutex<Seen>>, lose_first_answer: bool) -> Self {
        Self {
            simulator: SimulatedGateway::new(
                pool.clone(),
                Latency::fixed(Duration::from_millis(50)),
            ),
            pool,
            seen,
            lose_first_answer,
            answered: Mutex::new(HashSet::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("not poisoned")
    }
}

impl PaymentGateway for Observing {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, GatewayError> {
        {
            let mut seen = self.seen();
            seen.in_flight += 1;
            seen.most_in_flight = seen.most_in_flight.max(seen.in_flight);
        }
        let status: String = sqlx::query_scalar("select status from payments where order_id = $1")
            .bind(request.order_id)
            .fetch_one(&self.pool)
            .await
            .expect("the payment's intent is visible");
        let transactions: i64 = sqlx::query_scalar(
            "select count(distinct a.pid) from pg_locks l join pg_stat_activity a using (pid) \
             where l.relation = 'payments'::regclass and a.state like 'idle in transaction%'",
        )
        .fetch_one(&self.pool)
        .await
        .expect("pg_locks");
        let answer = self.simulator.charge(request).await;
        let mut seen = self.seen();
        seen.in_flight -= 1;
        seen.statuses.push(status);
        seen.transactions_on_payments.push(transactions);
        drop(seen);
        let first = self
            .answered
            .lock()
            .expect("not poisoned")
            .insert(request.idempotency_key);
        if self.lose_first_answer && first && answer.is_ok() {
            return Err(GatewayError::Transient(
                "no answer within the timeout (the provider charged)".into(),
            ));
        }
        answer
    }
}

#[tokio::test]
async fn the_intent_is_committed_before_the_gateway_is_called_and_no_transaction_waits_on_it() {
    // Arrange: a backlog, so the first batch holds many orders.
    let sandbox = Sandbox::new();
    let orders: Vec<_> = (0..10)
        .map(|i| order_created(&format!("user{i}@example.com")))
        .collect();
    let envelopes: Vec<_> = orders
        .iter()
        .map(|(_, envelope)| envelope.clone())
        .collect();
    publish_before_start(&sandbox, &envelopes).await;
    let seen = Arc::new(Mutex::new(Seen::default()));

    // Act
    let watching = seen.clone();
    let app = spawn_app_in(sandbox, move |pool| Observing::new(pool, watching, false)).await;

    // Assert: every order paid once.
    for (order, _) in &orders {
        assert_eq!(
            app.payment_of_status(&order.order_id, PaymentStatus::Succeeded)
                .await
                .status(),
            PaymentStatus::Succeeded
        );
        let charges = app.charges_of(&order.order_id).await;
        assert_eq!((charges.successful, charges.calls), (1, 1));
    }
    // Assert: each call saw its intent committed and no transaction of the service open on
    // the payments table; the calls of the batch overlapped.
    let seen = seen.lock().expect("not poisoned");
    assert_eq!(seen.statuses, vec!["processing"; orders.len()]);
    assert_eq!(seen.transactions_on_payments, vec![0; orders.len()]);
    assert!(
        seen.most_in_flight > 1,
        "the charges of a batch run concurrently: at most {} at once",
        seen.most_in_flight
    );
}

#[tokio::test]
async fn messages_failing_beside_charged_orders_in_their_batch_do_not_charge_them_again() {
    // Arrange: good orders, each followed by a message that fails. Before the charge was a
    // recorded step, each failure made its batch be applied again without it, and every good
    // order before it in the batch was charged again (up to 16 times each, here).
    let sandbox = Sandbox::new();
    let mut good = Vec::new();
    let mut envelopes = Vec::new();
    for i in 0..20 {
        let (order, envelope) = order_created(&format!("good{i}@example.com"));
        good.push(order);
        envelopes.push(envelope);
        let (mut bad, _) = order_created(&format!("bad{i}@example.com"));
        bad.user_id = "not-a-uuid".into();
        envelopes.push(messaging::Envelope::new(&bad, &test_support::new_context()));
    }
    publish_before_start(&sandbox, &envelopes).await;

    // Act
    let app = spawn_app_in(sandbox, simulator).await;

    // Assert
    let dlq = app
        .topology()
        .dead_letter_queue(&PAYMENT_SERVICE_ORDER_CREATED);
    eventually(|| async { test_support::queue_depth(&app.amqp, &dlq).await == 20 }).await;
    for order in &good {
        app.payment_of_status(&order.order_id, PaymentStatus::Succeeded)
            .await;
        let charges = app.charges_of(&order.order_id).await;
        assert_eq!(
            (charges.successful, charges.calls),
            (1, 1),
            "one call, one charge"
        );
    }
}

#[tokio::test]
async fn a_charge_whose_answer_was_lost_is_asked_again_under_the_same_key_and_made_once() {
    // Arrange: the provider charges, but its answer never arrives.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watching = seen.clone();
    let app = spawn_app_with_gateway(move |pool| Observing::new(pool, watching, true)).await;
    let mut events = app.capture("payment_processed").await;
    let (order, envelope) = order_created("ada@example.com");

    // Act
    app.publish(&envelope).await;

    // Assert: the retry resumed from the intent and got the first outcome back.
    let payment = app
        .payment_of_status(&order.order_id, PaymentStatus::Succeeded)
        .await;
    let charges = app.charges_of(&order.order_id).await;
    assert_eq!((charges.successful, charges.calls), (1, 2));
    assert_eq!(app.payments_of_order(&order.order_id).await.len(), 1);
    next_delivery(&mut events).await;
    test_support::assert_no_more_deliveries(&mut events, Duration::from_millis(500)).await;
    assert!(payment.process_time.is_some());
}

#[tokio::test]
async fn a_late_duplicate_of_a_processed_order_never_calls_the_gateway() {
    // Arrange: an order, paid.
    let app = spawn_app().await;
    let (order, envelope) = order_created("ada@example.com");
    app.publish(&envelope).await;
    app.payment_of_status(&order.order_id, PaymentStatus::Succeeded)
        .await;

    // Act: the same message again, twice at once, and the same order under a new message id.
    let mut resent = envelope.clone();
    resent.message_id = Uuid::now_v7();
    for duplicate in [&envelope, &envelope, &resent] {
        app.publish(duplicate).await;
    }

    // Assert: once an order published after them is paid, the one consumer worker took all
    // three (a queue is first in, first out), and the gateway heard of the first order once.
    let (sentinel, sentinel_envelope) = order_created("bob@example.com");
    app.publish(&sentinel_envelope).await;
    app.payment_of(&sentinel.order_id).await;
    let charges = app.charges_of(&order.order_id).await;
    assert_eq!((charges.successful, charges.calls), (1, 1));
    assert_eq!(app.payments_of_order(&order.order_id).await.len(), 1);
}

#[tokio::test]
async fn the_simulator_keeps_its_memory_across_restarts_and_answers_a_key_with_its_first_outcome() {
    // Arrange: the service's database, where the simulator keeps its records.
    let app = spawn_app().await;
    let flaky = ChargeRequest {
        idempotency_key: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        customer_email: "ada+flaky@example.com".into(),
        amount_minor: 999,
        currency: "USD".into(),
    };
    let fresh = || SimulatedGateway::new(app.db.clone(), Latency::NONE);

    // Act and assert: each call through a new simulator, as after a restart of the service.
    assert!(matches!(
        fresh().charge(&flaky).await,
        Err(GatewayError::Transient(_))
    ));
    assert!(matches!(
        fresh().charge(&flaky).await,
        Err(GatewayError::Transient(_))
    ));
    assert_eq!(fresh().charge(&flaky).await, Ok(ChargeOutcome::Succeeded));
    assert_eq!(fresh().charge(&flaky).await, Ok(ChargeOutcome::Succeeded));
    let charges = app.charges_of(&flaky.order_id.to_string()).await;
    assert_eq!((charges.successful, charges.calls), (1, 4));

    // A declined key stays declined; a failing key never charges.
    for (email, expected) in [
        (
            "bob+decline@example.com",
            Ok(ChargeOutcome::Declined {
                reason: "card_declined".into(),
            }),
        ),
        (
            "eve+fail@example.com",
            Err(GatewayError::Permanent("simulated processing error".into())),
        ),
    ] {
        let request = ChargeRequest {
            idempotency_key: Uuid::now_v7(),
            order_id: Uuid::now_v7(),
            customer_email: email.into(),
            ..flaky.clone()
        };
        for _ in 0..2 {
            assert_eq!(fresh().charge(&request).await, expected);
        }
        let charges = app.charges_of(&request.order_id.to_string()).await;
        assert_eq!((charges.successful, charges.calls), (0, 2));
    }
}
