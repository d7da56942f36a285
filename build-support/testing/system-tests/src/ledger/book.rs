//! The book: every CreateUser call the load made and what became of it, and the check of the
//! three databases, the gateway's records and the dead-letter queues against it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{Connection, types::AMQPValue};
use messaging::{
    Topology,
    retry::{FAILURE_KIND_HEADER, FAILURE_MESSAGE_HEADER, text_header},
    topology::{PAYMENT_SERVICE_ORDER_CREATED, SUBSCRIPTIONS},
};
use prost::Message;
use proto::order::v1::OrderCreated;
use sqlx::{PgPool, postgres::PgPoolOptions};
use test_support::Sandbox;
use uuid::Uuid;

use crate::processes::Service;

/// The header that marks the poison the ledger injects, so its dead letters are expected.
pub const INJECTED_HEADER: &str = "chaos_injected";

/// The test card a user's e-mail carries, and the end its flow must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Card {
    Ordinary,
    Decline,
    Flaky,
    Fail,
}

impl Card {
    /// The mix of a load: mostly ordinary, a tenth of each test card.
    pub fn for_call(n: usize) -> Self {
        match n % 10 {
            6 => Self::Decline,
            7 => Self::Flaky,
            8 => Self::Fail,
            _ => Self::Ordinary,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Self::Ordinary => "",
            Self::Decline => "+decline",
            Self::Flaky => "+flaky",
            Self::Fail => "+fail",
        }
    }

    /// The order's status, the payment's status and the successful charges at the gateway
    /// this card ends with.
    fn expected(self) -> (&'static str, &'static str, i64) {
        match self {
            Self::Ordinary | Self::Flaky => ("paid", "succeeded", 1),
            Self::Decline => ("payment_declined", "declined", 0),
            // The charge fails permanently: its order_created is dead-lettered, the intent
            // stays processing, nothing is charged.
            Self::Fail => ("pending_payment", "processing", 0),
        }
    }
}

/// What a CreateUser call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not answered yet.
    InFlight,
    Accepted(Uuid),
    /// No answer, or one that does not say whether the user was created (UNAVAILABLE, a cut
    /// connection, a deadline): the caller resends its request_id.
    Unknown(String),
    /// A definite no (the ledger's calls are all valid and unique, so this is a finding).
    Rejected(String),
}

/// One call of the load.
#[derive(Debug, Clone)]
pub struct Call {
    pub email: String,
    pub request_id: Uuid,
    pub card: Card,
    pub outcome: Outcome,
    /// Whether its outcome was unknown at first and resolved by resending.
    pub resent: bool,
}

/// Every call so far; shared with the load's tasks.
pub type Calls = Arc<Mutex<Vec<Call>>>;

/// What the ledger has seen in the dead-letter queues so far.
#[derive(Debug, Default)]
pub struct DeadLetters {
    /// Orders of `+fail` users whose order_created reached the DLQ.
    pub failed_orders: HashSet<Uuid>,
    /// Injected poison dead-lettered, and how many were injected.
    pub poison_seen: usize,
    pub poison_injected: usize,
    /// Anything else, described.
    pub unexpected: Vec<String>,
}

/// Where the books stand against the databases.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Accepted users whose flow is not (yet) where its card says.
    pub pending: Vec<String>,
    /// Effects twice: a second order or payment, a second successful charge.
    pub duplicated: Vec<String>,
    /// Users nobody was told were created.
    pub phantom: Vec<String>,
    /// Rows waiting in the three outboxes.
    pub outbox_rows: i64,
    /// `+fail` orders not (yet) seen in the DLQ.
    pub fail_not_dead_lettered: usize,
    /// Injected poison not (yet) seen in the DLQs.
    pub poison_missing: usize,
}

impl Verdict {
    pub fn converged(&self) -> bool {
        self.pending.is_empty()
            && self.outbox_rows == 0
            && self.fail_not_dead_lettered == 0
            && self.poison_missing == 0
    }
}

/// Reads the databases and the gateway's records and holds them against the calls.
pub async fn check(databases: &Databases, calls: &[Call], dead: &DeadLetters) -> Verdict {
    let users: Vec<(Uuid, String)> = sqlx::query_as("select user_id, email from users")
        .fetch_all(&databases.users)
        .await
        .unwrap_or_default();
    let orders: Vec<(Uuid, Uuid, String)> =
        sqlx::query_as("select user_id, order_id, status from orders")
            .fetch_all(&databases.orders)
            .await
            .unwrap_or_default();
    let payments: Vec<(Uuid, String)> = sqlx::query_as("select order_id, status from payments")
        .fetch_all(&databases.payments)
        .await
        .unwrap_or_default();
    let charges: Vec<(Uuid, i64)> = sqlx::query_as(
        "select order_id, count(*) filter (where outcome = 'succeeded') \
         from simulated_charges group by order_id",
    )
    .fetch_all(&databases.payments)
    .await
    .unwrap_or_default();
    let mut outbox_rows = 0;
    for db in databases.all() {
        outbox_rows += sqlx::query_scalar::<_, i64>("select count(*) from outbox")
            .fetch_one(db)
            .await
            .unwrap_or(1);
    }

    let mut orders_of: HashMap<Uuid, Vec<(Uuid, String)>> = HashMap::new();
    for (user_id, order_id, status) in orders {
        orders_of
            .entry(user_id)
            .or_default()
            .push((order_id, status));
    }
    let mut payments_of: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (order_id, status) in payments {
        payments_of.entry(order_id).or_default().push(status);
    }
    let charges_of: HashMap<Uuid, i64> = charges.into_iter().collect();

    let mut verdict = Verdict {
        outbox_rows,
        poison_missing: dead.poison_injected.saturating_sub(dead.poison_seen),
        ..Verdict::default()
    };
    let accepted: HashMap<Uuid, &Call> = calls
        .iter()
        .filter_map(|call| match call.outcome {
            Outcome::Accepted(user_id) => Some((user_id, call)),
            _ => None,
        })
        .collect();
    let accepted_emails: HashSet<&str> = accepted.values().map(|c| c.email.as_str()).collect();
    for (user_id, email) in &users {
        if !accepted.contains_key(user_id) && !awaiting(calls, email, &accepted_emails) {
            verdict.phantom.push(format!("user {user_id} <{email}>"));
        }
    }
    for (user_id, call) in &accepted {
        let (order_status, payment_status, charged) = call.card.expected();
        let orders = orders_of.get(user_id).map(Vec::as_slice).unwrap_or(&[]);
        if orders.len() > 1 {
            verdict
                .duplicated
                .push(format!("{} orders for user {user_id}", orders.len()));
        }
        let Some((order_id, status)) = orders.first() else {
            verdict
                .pending
                .push(format!("user {user_id} <{}>: no order", call.email));
            continue;
        };
        let payments = payments_of.get(order_id).map(Vec::as_slice).unwrap_or(&[]);
        if payments.len() > 1 {
            verdict
                .duplicated
                .push(format!("{} payments for order {order_id}", payments.len()));
        }
        let successful = charges_of.get(order_id).copied().unwrap_or(0);
        if successful > 1 {
            verdict.duplicated.push(format!(
                "{successful} successful charges for order {order_id}"
            ));
        }
        let payment = payments.first().map(String::as_str).unwrap_or("none");
        let dead_lettered = call.card != Card::Fail || dead.failed_orders.contains(order_id);
        if status != order_status
            || payment != payment_status
            || successful != charged
            || !dead_lettered
        {
            if call.card == Card::Fail && !dead_lettered {
                verdict.fail_not_dead_lettered += 1;
            }
            verdict.pending.push(format!(
                "user {user_id} <{}>: order {status}, payment {payment}, {successful} charge(s)",
                call.email
            ));
        }
    }
    verdict.pending.sort();
    verdict
}

/// Whether a user with `email` may still be the answer to a call not yet resolved.
fn awaiting(calls: &[Call], email: &str, accepted: &HashSet<&str>) -> bool {
    !accepted.contains(email)
        && calls.iter().any(|call| {
            call.email == email && matches!(call.outcome, Outcome::InFlight | Outcome::Unknown(_))
        })
}

/// Takes every message from the three DLQs and accounts for it: injected poison, a `+fail`
/// user's order, or an unexpected dead letter.
pub async fn drain_dead_letters(amqp: &Connection, topology: &Topology, dead: &mut DeadLetters) {
    for subscription in SUBSCRIPTIONS {
        let queue = topology.dead_letter_queue(subscription);
        while let Some(delivery) = test_support::take_message(amqp, &queue).await {
            let properties = &delivery.properties;
            let injected = properties
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key(INJECTED_HEADER));
            if injected {
                dead.poison_seen += 1;
                continue;
            }
            if subscription.queue == PAYMENT_SERVICE_ORDER_CREATED.queue
                && let Ok(order) = OrderCreated::decode(delivery.data.as_slice())
                && order.user_email.contains("+fail@")
                && let Ok(order_id) = order.order_id.parse()
            {
                dead.failed_orders.insert(order_id);
                continue;
            }
            let kind = text_header(properties, FAILURE_KIND_HEADER).unwrap_or_default();
            let why = text_header(properties, FAILURE_MESSAGE_HEADER).unwrap_or_default();
            let death = properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-death").cloned())
                .map(|value| match value {
                    AMQPValue::FieldArray(deaths) => format!("{} x-death", deaths.as_slice().len()),
                    _ => String::new(),
                })
                .unwrap_or_default();
            dead.unexpected
                .push(format!("{}: {kind} {why} {death}", subscription.queue));
        }
    }
}

/// Pools on the three services' databases, for reading the books.
#[derive(Debug, Clone)]
pub struct Databases {
    pub users: PgPool,
    pub orders: PgPool,
    pub payments: PgPool,
}

impl Databases {
    /// Small lazy pools on `sandbox`'s databases (the services create them).
    pub(crate) fn of(sandbox: &Sandbox) -> Self {
        let pool = |service: Service| {
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(2))
                .connect_lazy(&sandbox.database_url(service.database()))
                .expect("a valid URL")
        };
        Self {
            users: pool(Service::User),
            orders: pool(Service::Order),
            payments: pool(Service::Payment),
        }
    }

    pub fn all(&self) -> [&PgPool; 3] {
        [&self.users, &self.orders, &self.payments]
    }
}
