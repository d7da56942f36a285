//! Batches applied at once, the way the consumer applies them (without a broker): one statement
//! for all the orders of a batch, and still each message's outcome what it would be alone.

use std::{collections::HashMap, sync::Arc};

use messaging::{
    Envelope, Handler, HandlerError, Incoming,
    topology::{Consumes, ORDER_SERVICE_PAYMENT_PROCESSED, ORDER_SERVICE_USER_CREATED},
};
use order_service::{
    domain::PriceList,
    handlers::{PaymentProcessedHandler, UserCreatedHandler},
};
use prost::Message;
use proto::{
    order::v1::OrderCreated,
    payment::v1::{PaymentProcessed, PaymentStatus},
    user::v1::{Plan, UserCreated},
};
use sqlx::{PgConnection, PgPool};
use test_support::{Sandbox, Settled, apply_as_consumer, delivered};
use uuid::Uuid;

use crate::helpers::{user_created, user_created_without_uuid, user_id};

use Settled::{Applied, DeadLettered, Duplicate};

/// The order service's database, migrated, with no service running on it: what a batch writes
/// stays where the test can read it (no relay takes the outbox rows).
async fn orders_database(sandbox: &Sandbox) -> PgPool {
    sandbox
        .migrated_pool("orders", order_service::migrator())
        .await
}

/// Applies the events of `envelopes` as one batch of `consumer`'s, as the consumer does.
async fn apply<H: Handler<Prepared = ()>>(
    pool: &PgPool,
    consumer: Consumes<H::Event>,
    handler: &H,
    envelopes: &[&Envelope],
) -> Vec<Settled> {
    let messages: Vec<_> = envelopes.iter().map(|e| delivered(e)).collect();
    let prepared = vec![(); messages.len()];
    apply_as_consumer(pool, consumer, handler, &messages, &prepared).await
}

async fn apply_user_created(pool: &PgPool, envelopes: &[&Envelope]) -> Vec<Settled> {
    let handler = UserCreatedHandler::new(Arc::new(PriceList::default()));
    apply(pool, ORDER_SERVICE_USER_CREATED, &handler, envelopes).await
}

async fn apply_payment_processed(pool: &PgPool, envelopes: &[&Envelope]) -> Vec<Settled> {
    let handler = PaymentProcessedHandler;
    apply(pool, ORDER_SERVICE_PAYMENT_PROCESSED, &handler, envelopes).await
}

/// Another `user_created` for the user of `envelope`, under a new message id.
fn user_created_again(envelope: &Envelope, plan: Plan) -> Envelope {
    let mut event = UserCreated::decode(envelope.payload.as_slice()).expect("a UserCreated");
    event.plan = plan.into();
    Envelope::new(&event, &test_support::new_context())
}

/// A `payment_processed` for the order `order_id` with `status` (a raw enum value).
fn payment_processed(order_id: &str, status: i32) -> Envelope {
    let event = PaymentProcessed {
        payment_id: Uuid::new_v4().to_string(),
        order_id: order_id.into(),
        user_id: Uuid::new_v4().to_string(),
        status,
        decline_reason: String::new(),
        amount_minor: 999,
        currency: "USD".into(),
        process_time: None,
    };
    Envelope::new(&event, &test_support::new_context())
}

/// Each user's order: (plan, amount, status), by user id.
async fn orders_by_user(pool: &PgPool) -> HashMap<String, (String, i64, String)> {
    let rows: Vec<(Uuid, String, i64, String)> =
        sqlx::query_as("select user_id, plan, amount_minor, status from orders")
            .fetch_all(pool)
            .await
            .expect("orders");
    rows.into_iter()
        .map(|(user, plan, amount, status)| (user.to_string(), (plan, amount, status)))
        .collect()
}

/// The order id of the user `user_id`.
async fn order_id_of(pool: &PgPool, user_id: &str) -> String {
    let order_id: Uuid = sqlx::query_scalar("select order_id from orders where user_id = $1::uuid")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .expect("the user's order");
    order_id.to_string()
}

/// The outbox rows of `routing_key`, by the message that caused them.
async fn caused(pool: &PgPool, routing_key: &str) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as(
        "select causation_id, payload from outbox where routing_key = $1 order by causation_id",
    )
    .bind(routing_key)
    .fetch_all(pool)
    .await
    .expect("outbox rows")
}

/// A user whose order exists already, and a batch of `user_created` with two new users, the
/// message that made the existing order again, a second message (another plan) for one of the new
/// users, another for the user with an order, the first message again, and two malformed
/// messages (which stand after a duplicate: the index of the message at fault is its index in the
/// batch, not among the new messages).
struct MixedBatch {
    earlier: Envelope,
    ada: Envelope,
    bob: Envelope,
    ada_again: Envelope,
    earlier_again: Envelope,
    no_uuid: Envelope,
    unknown_plan: Envelope,
}

impl MixedBatch {
    fn new() -> Self {
        let earlier = user_created("earlier@example.com", Plan::Basic);
        let ada = user_created("ada@example.com", Plan::Pro);
        let unknown_plan = UserCreated {
            user_id: Uuid::new_v4().to_string(),
            email: "unknown-plan@example.com".into(),
            name: "Unknown Plan".into(),
            plan: 42,
            create_time: None,
        };
        Self {
            bob: user_created("bob@example.com", Plan::Basic),
            ada_again: user_created_again(&ada, Plan::Enterprise),
            earlier_again: user_created_again(&earlier, Plan::Pro),
            no_uuid: user_created_without_uuid(),
            unknown_plan: Envelope::new(&unknown_plan, &test_support::new_context()),
            earlier,
            ada,
        }
    }

    fn batch(&self) -> [&Envelope; 8] {
        [
            &self.ada,
            &self.earlier,
            &self.no_uuid,
            &self.bob,
            &self.ada_again,
            &self.earlier_again,
            &self.unknown_plan,
            &self.ada,
        ]
    }
}

/// The order handler without a batch step of its own: the trait's default, `handle` for each
/// message in turn.
struct OneAtATime(UserCreatedHandler);

impl Handler for OneAtATime {
    type Event = UserCreated;
    type Prepared = ();

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<UserCreated>,
        prepared: &(),
    ) -> Result<Vec<Envelope>, HandlerError> {
        self.0.handle(tx, message, prepared).await
    }
}

/// What `handler` makes of a [`MixedBatch`] in a fresh database: each message's outcome, each
/// user's order, and the `order_created` events as (causing message, user id).
async fn mixed_batch_through<H: Handler<Event = UserCreated, Prepared = ()>>(
    handler: &H,
    mixed: &MixedBatch,
) -> (
    Vec<Settled>,
    HashMap<String, (String, i64, String)>,
    Vec<(String, String)>,
) {
    let sandbox = Sandbox::new();
    let pool = orders_database(&sandbox).await;
    let earlier = apply(
        &pool,
        ORDER_SERVICE_USER_CREATED,
        handler,
        &[&mixed.earlier],
    )
    .await;
    assert_eq!(earlier, [Applied]);
    let settled = apply(&pool, ORDER_SERVICE_USER_CREATED, handler, &mixed.batch()).await;
    let events = caused(&pool, "order_created")
        .await
        .into_iter()
        .map(|(causation, payload)| {
            let event = OrderCreated::decode(payload.as_slice()).expect("an OrderCreated");
            (causation, event.user_id)
        })
        .collect();
    (settled, orders_by_user(&pool).await, events)
}

#[tokio::test]
async fn a_batch_of_user_created_comes_to_what_its_messages_come_to_one_at_a_time() {
    // Arrange
    let mixed = MixedBatch::new();
    let handler = UserCreatedHandler::new(Arc::new(PriceList::default()));

    // Act: the handler's batch step, and the trait's default, in databases of their own.
    let set_based = mixed_batch_through(&handler, &mixed).await;
    let one_at_a_time = mixed_batch_through(&OneAtATime(handler), &mixed).await;

    // Assert
    assert_eq!(set_based, one_at_a_time);
    assert_eq!(set_based.1.len(), 3, "{set_based:?}");
}

#[tokio::test]
async fn a_batch_of_user_created_gives_each_new_user_one_order_and_one_order_created_and_fails_only_its_malformed_messages()
 {
    // Arrange: a user whose order exists already, and a batch with two new users, the message
    // that made the existing order again, a second message (another plan) for one of the new
    // users, another for the user with an order, the first message again, and two malformed
    // messages.
    let sandbox = Sandbox::new();
    let pool = orders_database(&sandbox).await;
    let mixed = MixedBatch::new();
    let MixedBatch {
        earlier,
        ada,
        bob,
        ada_again,
        earlier_again,
        ..
    } = &mixed;
    assert_eq!(apply_user_created(&pool, &[earlier]).await, [Applied]);
    let batch = mixed.batch();

    // Act
    let settled = apply_user_created(&pool, &batch).await;

    // Assert: the malformed messages failed alone; the second messages of a user had nothing to
    // do but are applied (in the inbox); messages applied before are duplicates.
    assert_eq!(
        settled,
        [
            Applied,
            Duplicate,
            DeadLettered,
            Applied,
            Applied,
            Applied,
            DeadLettered,
            Duplicate
        ]
    );

    // Assert: one order per user, priced by the user's first message.
    let orders = orders_by_user(&pool).await;
    let expected = HashMap::from([
        (
            user_id(earlier),
            ("basic".into(), 999, "pending_payment".into()),
        ),
        (user_id(ada), ("pro".into(), 2999, "pending_payment".into())),
        (
            user_id(bob),
            ("basic".into(), 999, "pending_payment".into()),
        ),
    ]);
    assert_eq!(orders, expected);

    // Assert: one order_created per order created, caused by the message that created it and
    // announcing that order.
    let events = caused(&pool, "order_created").await;
    let mut expected = Vec::new();
    for envelope in [earlier, ada, bob] {
        let order_id = order_id_of(&pool, &user_id(envelope)).await;
        expected.push((envelope.message_id.to_string(), order_id, user_id(envelope)));
    }
    expected.sort();
    let events: Vec<_> = events
        .into_iter()
        .map(|(causation, payload)| {
            let event = OrderCreated::decode(payload.as_slice()).expect("an OrderCreated");
            (causation, event.order_id, event.user_id)
        })
        .collect();
    assert_eq!(events, expected);

    // Assert: the inbox holds every message applied, and no malformed one.
    let inbox: Vec<Uuid> =
        sqlx::query_scalar("select message_id from processed_messages order by message_id")
            .fetch_all(&pool)
            .await
            .expect("inbox");
    let mut applied: Vec<Uuid> = [earlier, ada, bob, ada_again, earlier_again]
        .iter()
        .map(|envelope| envelope.message_id)
        .collect();
    applied.sort();
    assert_eq!(inbox, applied);
}

#[tokio::test]
async fn a_batch_of_payment_processed_settles_each_pending_order_once_and_fails_only_unknown_orders_and_malformed_messages()
 {
    // Arrange: four users' orders, one of them settled already.
    let sandbox = Sandbox::new();
    let pool = orders_database(&sandbox).await;
    let users: Vec<_> = (0..4)
        .map(|i| user_created(&format!("user{i}@example.com"), Plan::Basic))
        .collect();
    let refs: Vec<_> = users.iter().collect();
    assert_eq!(apply_user_created(&pool, &refs).await, [Applied; 4]);
    let mut order_ids = Vec::new();
    for user in &users {
        order_ids.push(order_id_of(&pool, &user_id(user)).await);
    }
    let (succeeded, declined) = (
        PaymentStatus::Succeeded as i32,
        PaymentStatus::Declined as i32,
    );
    let settled_before = payment_processed(&order_ids[3], succeeded);
    assert_eq!(
        apply_payment_processed(&pool, &[&settled_before]).await,
        [Applied]
    );

    // Arrange: a batch settling two pending orders, a second (contradicting) message for one of
    // them, a late one for the order settled before, one for an unknown order, one whose order
    // id is no UUID, one with a status that is neither outcome (for the fourth, pending order),
    // and the first message again.
    let paid = payment_processed(&order_ids[0], succeeded);
    let declined_order = payment_processed(&order_ids[1], declined);
    let paid_again = payment_processed(&order_ids[0], declined);
    let late = payment_processed(&order_ids[3], declined);
    let unknown = payment_processed(&Uuid::now_v7().to_string(), succeeded);
    let no_uuid = payment_processed("not-a-uuid", succeeded);
    let no_outcome = payment_processed(&order_ids[2], PaymentStatus::Unspecified as i32);
    let batch = [
        &paid,
        &declined_order,
        &unknown,
        &paid_again,
        &no_uuid,
        &late,
        &no_outcome,
        &paid,
    ];

    // Act
    let settled = apply_payment_processed(&pool, &batch).await;

    // Assert
    assert_eq!(
        settled,
        [
            Applied,
            Applied,
            DeadLettered,
            Applied,
            DeadLettered,
            Applied,
            DeadLettered,
            Duplicate
        ]
    );
    let statuses: HashMap<_, _> = orders_by_user(&pool)
        .await
        .into_iter()
        .map(|(user, (_, _, status))| (user, status))
        .collect();
    let expected = HashMap::from([
        (user_id(&users[0]), "paid".to_owned()),
        (user_id(&users[1]), "payment_declined".to_owned()),
        (user_id(&users[2]), "pending_payment".to_owned()),
        (user_id(&users[3]), "paid".to_owned()),
    ]);
    assert_eq!(statuses, expected);
    let outbox: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&pool)
        .await
        .expect("outbox");
    assert_eq!(
        outbox, 4,
        "the orders' order_created; payment_processed causes no event"
    );
}
