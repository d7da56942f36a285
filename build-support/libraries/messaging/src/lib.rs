//! The messaging library every service is built on.
//!
//! - [`topology`]: exchange, queue and dead-letter names (with the `BUS_NAMESPACE`
//!   prefix) and their declaration.
//! - [`queues`]: the queue type (`QUEUE_TYPE`, quorum or classic) and each queue's arguments.
//! - [`envelope`]: an event with every AMQP property and header, set in one place.
//! - [`headers`]: reading a delivery's headers as text and integers.
//! - [`publisher`]: publishing with confirms and `mandatory`; a returned message is a failure.
//! - [`addresses`]: `AMQP_URL`, one node or a cluster's nodes.
//! - [`connection`]: the supervised connection to RabbitMQ that the rest borrows from.
//! - [`limits`]: the bounds that keep a hostile message's headers harmless.
//! - [`trust`]: who may produce which event (AMQP `user_id`, `TRUSTED_PRODUCERS`).
//! - [`outbox`]: the transactional outbox and the relay that drains it.
//! - [`consumer`] and [`inbox`]: decode, apply in one transaction with the inbox row, ack after
//!   commit, dead-letter what cannot be decoded; inbox rows deleted after their retention.
//! - [`activity`]: what a service did since its last summary line (messages processed per
//!   consumer, retries, dead letters), counted with atomics.

pub mod activity;
pub mod addresses;
pub mod connection;
pub mod consumer;
pub mod db_errors;
pub mod envelope;
pub mod headers;
pub mod inbox;
pub mod limits;
pub mod outbox;
pub mod publisher;
pub mod queues;
pub mod retry;
pub mod topology;
pub mod trace_context;
pub mod trust;

pub use activity::Activity;
pub use addresses::BrokerAddresses;
pub use connection::{Bus, BusSettings, Connected, QueueProbe};
pub use consumer::{ConsumerTuning, EventConsumer, Handler, HandlerError, Incoming};
pub use envelope::{Envelope, EventContext};
pub use inbox::retention::InboxRetention;
pub use outbox::{Dispatcher, OutboxRelay};
pub use publisher::{PublishError, Publisher};
pub use queues::QueueType;
pub use retry::RetryPolicy;
pub use topology::{Namespace, Topology};
pub use trace_context::TraceParent;
pub use trust::TrustedProducers;

/// The messaging tables (outbox and inbox), applied into each service's own database
/// before the service's migrations. Versions are small integers so they never collide with the
/// services' timestamped versions.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}
