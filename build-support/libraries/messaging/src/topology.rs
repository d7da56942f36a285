//! Names and declaration of the broker topology (README, Events on RabbitMQ).
//!
//! One topic exchange carries every event, routed by event name. Each consumer queue dead-letters
//! through a direct exchange into its own `<queue>.dlq`. Every queue is of the configured
//! [`QueueType`] (quorum unless told otherwise), with the arguments of its role
//! ([`crate::queues`]). Every name is prefixed with the
//! `BUS_NAMESPACE`, so tests and several stacks can share one broker without seeing each other.
//! Every service declares the whole topology (declaring is idempotent), so an event published
//! before its consumer ever ran still waits in that consumer's durable queue.

use std::marker::PhantomData;

use lapin::{
    Channel, Connection, Consumer, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable},
};
use proto::{Event, order::v1::OrderCreated, payment::v1::PaymentProcessed, user::v1::UserCreated};

use uuid::Uuid;

use crate::{
    queues::{InequivalentQueue, QueueRole, QueueType},
    retry::RetryPolicy,
};

/// The exchange every event is published to.
pub const EXCHANGE: &str = "events_exchange";
/// The exchange dead letters go through, keyed by the name of the queue they died in.
pub const DEAD_LETTER_EXCHANGE: &str = "events_exchange.dlx";
/// Suffix of a consumer queue's dead-letter queue.
pub const DLQ_SUFFIX: &str = ".dlq";

/// A durable consumer queue, untyped: what is declared, listed and deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// The consuming service (e.g. `order_service`): the queue's prefix and its inbox key.
    pub consumer: &'static str,
    /// Queue name without the namespace, `<consumer>.<event>`.
    pub queue: &'static str,
    /// The event name (routing key) bound to it.
    pub routing_key: &'static str,
}

/// A consumer queue typed by the event it receives: what a consumer is given, so a handler of
/// one event cannot be paired with another event's queue (it does not compile; see
/// `EventConsumer::new`). It derefs to its [`Subscription`].
#[derive(Debug)]
pub struct Consumes<E> {
    subscription: Subscription,
    event: PhantomData<fn() -> E>,
}

impl<E> Clone for Consumes<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Consumes<E> {}

impl<E: Event> Consumes<E> {
    /// `consumer`'s queue of `E`, named `queue` (`<consumer>.<routing key>`; a test checks).
    const fn new(consumer: &'static str, queue: &'static str) -> Self {
        Self {
            subscription: Subscription {
                consumer,
                queue,
                routing_key: E::ROUTING_KEY,
            },
            event: PhantomData,
        }
    }
}

impl<E> Consumes<E> {
    /// The queue, untyped.
    pub const fn subscription(&self) -> Subscription {
        self.subscription
    }
}

impl<E> std::ops::Deref for Consumes<E> {
    type Target = Subscription;

    fn deref(&self) -> &Subscription {
        &self.subscription
    }
}

/// The order service's queue of `user_created`.
pub const ORDER_SERVICE_USER_CREATED: Consumes<UserCreated> =
    Consumes::new("order_service", "order_service.user_created");
/// The payment service's queue of `order_created`.
pub const PAYMENT_SERVICE_ORDER_CREATED: Consumes<OrderCreated> =
    Consumes::new("payment_service", "payment_service.order_created");
/// The order service's queue of `payment_processed`.
pub const ORDER_SERVICE_PAYMENT_PROCESSED: Consumes<PaymentProcessed> =
    Consumes::new("order_service", "order_service.payment_processed");

/// Every consumer queue of the system.
pub const SUBSCRIPTIONS: &[Subscription] = &[
    ORDER_SERVICE_USER_CREATED.subscription(),
    PAYMENT_SERVICE_ORDER_CREATED.subscription(),
    ORDER_SERVICE_PAYMENT_PROCESSED.subscription(),
];

/// The events of the system, by routing key, with the service that produces each.
pub const EVENTS: &[(&str, &str)] = &[
    (UserCreated::ROUTING_KEY, UserCreated::PRODUCER),
    (OrderCreated::ROUTING_KEY, OrderCreated::PRODUCER),
    (PaymentProcessed::ROUTING_KEY, PaymentProcessed::PRODUCER),
];

/// How much a long-running watcher's private queue holds (see [`Topology::watch_bounded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchBounds {
    /// Deliveries the broker pushes ahead of their acks.
    pub prefetch: u16,
    /// Messages the queue keeps beyond those; past it the oldest are dropped.
    pub max_length: u32,
}

/// An invalid `BUS_NAMESPACE`.
#[derive(Debug, thiserror::Error)]
#[error(
    "BUS_NAMESPACE {0:?} is invalid: use 1 to 64 ASCII letters, digits, '-' or '_', or leave it empty"
)]
pub struct InvalidNamespace(String);

/// The `BUS_NAMESPACE` prefix; empty means none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace(Option<String>);

impl Namespace {
    /// Parses a namespace; the empty string means no prefix.
    pub fn parse(raw: &str) -> Result<Self, InvalidNamespace> {
        if raw.is_empty() {
            return Ok(Self(None));
        }
        let valid = raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(Some(raw.to_owned())))
        } else {
            Err(InvalidNamespace(raw.to_owned()))
        }
    }

    /// The namespace as configured; empty for none.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }

    /// `base` with the namespace prefix, `X.base`, or `base` alone without a namespace.
    pub fn apply(&self, base: &str) -> String {
        match &self.0 {
            Some(prefix) => format!("{prefix}.{base}"),
            None => base.to_owned(),
        }
    }
}

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    /// A queue exists with other arguments (e.g. of the other [`QueueType`]).
    #[error(transparent)]
    Inequivalent(#[from] InequivalentQueue),
}

/// The topology of one namespace: its exchanges, and for every consumer queue its dead-letter
/// queue and its retry queues (one per delay of the retry policy), each of the queue type.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    namespace: Namespace,
    retry: RetryPolicy,
    queue_type: QueueType,
}

impl Topology {
    /// The topology under `namespace`, with the default retry delays and queue type.
    pub fn new(namespace: Namespace) -> Self {
        Self {
            namespace,
            retry: RetryPolicy::default(),
            queue_type: QueueType::default(),
        }
    }

    /// The same topology with the retry queues of `retry`'s delays.
    pub fn with_retry(self, retry: RetryPolicy) -> Self {
        Self { retry, ..self }
    }

    /// The same topology with its queues of `queue_type`.
    pub fn with_queue_type(self, queue_type: QueueType) -> Self {
        Self { queue_type, ..self }
    }

    /// What the queues are declared as.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// The retry delays, one retry queue each.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The full names of a consumer queue's retry queues.
    pub fn retry_queues(&self, subscription: &Subscription) -> Vec<String> {
        let queue = self.queue(subscription);
        self.retry
            .delays()
            .iter()
            .map(|delay| RetryPolicy::retry_queue(&queue, *delay))
            .collect()
    }

    /// The namespace every name is prefixed with.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The events exchange's full name.
    pub fn exchange(&self) -> String {
        self.namespace.apply(EXCHANGE)
    }

    /// Watches the events published with `routing_key` without taking them from anyone: a
    /// private queue (exclusive, gone with the connection) bound to the events exchange, and a
    /// consumer on it. Fails when the exchange does not exist yet.
    pub async fn watch(
        &self,
        connection: &Connection,
        routing_key: &str,
    ) -> Result<Consumer, lapin::Error> {
        let channel = connection.create_channel().await?;
        self.watch_on(&channel, "", routing_key, FieldTable::default())
            .await
    }

    /// Watches the events published with `routing_key` as [`Topology::watch`] does, for a
    /// watcher that runs as long as its service. The private queue is named among `owner`'s
    /// own names (`<owner>.watch.<routing key>.<random>`, namespaced), which a broker that grants
    /// each service only its own queues lets it declare, bind and read. The broker pushes at most
    /// [`WatchBounds::prefetch`] deliveries ahead of their acks (ack many at once with
    /// `multiple`), and the queue keeps at most [`WatchBounds::max_length`] more, dropping the
    /// oldest: a watcher that falls behind, or a flood, costs bounded memory on both sides.
    pub async fn watch_bounded(
        &self,
        connection: &Connection,
        owner: &str,
        routing_key: &str,
        bounds: WatchBounds,
    ) -> Result<Consumer, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(bounds.prefetch, BasicQosOptions::default())
            .await?;
        let queue = self.namespace.apply(&format!(
            "{owner}.watch.{routing_key}.{}",
            Uuid::new_v4().simple()
        ));
        let mut arguments = FieldTable::default();
        // Overflow drops the oldest (the default): refusing publishes would fail the producer's.
        arguments.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(bounds.max_length)),
        );
        self.watch_on(&channel, &queue, routing_key, arguments)
            .await
    }

    /// Declares the private queue `queue` (server-named when empty) on `channel`, binds it to
    /// `routing_key` and consumes it.
    async fn watch_on(
        &self,
        channel: &Channel,
        queue: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<Consumer, lapin::Error> {
        let queue = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                self.exchange().as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// The dead-letter exchange's full name.
    pub fn dead_letter_exchange(&self) -> String {
        self.namespace.apply(DEAD_LETTER_EXCHANGE)
    }

    /// The full name of a consumer queue.
    pub fn queue(&self, subscription: &Subscription) -> String {
        self.namespace.apply(subscription.queue)
    }

    /// The full name of a consumer queue's dead-letter queue.
    pub fn dead_letter_queue(&self, subscription: &Subscription) -> String {
        format!("{}{DLQ_SUFFIX}", self.queue(subscription))
    }

    /// Declares exchanges, queues, dead-letter and retry queues, and bindings. Idempotent.
    ///
    /// Every queue of the system is declared, so an event published before its consumer first
    /// ran still waits for it. A broker that grants each service only what it needs may refuse a
    /// service the queues of others (declaring a dead-lettering queue takes read access to it):
    /// those are skipped, since their consumers declare them. The queues in `owned` (the ones
    /// this service consumes) must be declared. A failure is the caller's to log.
    #[tracing::instrument(skip_all, fields(exchange = %self.exchange()))]
    pub async fn declare(
        &self,
        connection: &Connection,
        owned: &[Subscription],
    ) -> Result<(), DeclareError> {
        let channel = connection.create_channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        close(&channel).await;

        for subscription in SUBSCRIPTIONS {
            // An access error closes the channel: one channel per queue.
            let channel = connection.create_channel().await?;
            match self.declare_subscription(&channel, subscription).await {
                Ok(()) => close(&channel).await,
                Err(DeclareError::Amqp(error))
                    if !owned.contains(subscription) && is_access_refused(&error) =>
                {
                    tracing::debug!(
                        queue = %self.queue(subscription),
                        "not permitted to declare another service's queue; its consumer does"
                    );
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    async fn declare_subscription(
        &self,
        channel: &Channel,
        subscription: &Subscription,
    ) -> Result<(), DeclareError> {
        let queue = self.queue(subscription);
        let dlq = self.dead_letter_queue(subscription);
        let dead_letter_exchange = self.dead_letter_exchange();
        self.declare_queue(channel, &dlq, QueueRole::Plain).await?;
        // Dead letters are routed by the name of the queue they died in.
        bind(channel, &dlq, &dead_letter_exchange, &queue).await?;

        let work = QueueRole::Work {
            exchange: &dead_letter_exchange,
            routing_key: &queue,
        };
        self.declare_queue(channel, &queue, work).await?;
        // Retries come back through the dead-letter exchange (see `crate::retry`): each retry
        // queue is bound to it under its own name, and dead-letters back under `requeue`.
        let requeue = RetryPolicy::requeue_key(&queue);
        bind(channel, &queue, &dead_letter_exchange, &requeue).await?;
        for delay in self.retry.delays() {
            let retry_queue = RetryPolicy::retry_queue(&queue, *delay);
            let role = QueueRole::Retry {
                ttl_ms: i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                exchange: &dead_letter_exchange,
                routing_key: &requeue,
            };
            self.declare_queue(channel, &retry_queue, role).await?;
            bind(channel, &retry_queue, &dead_letter_exchange, &retry_queue).await?;
        }
        bind(channel, &queue, &self.exchange(), subscription.routing_key).await?;
        Ok(())
    }

    /// Declares a durable queue of the topology's type with the arguments of `role`; a queue
    /// that exists with other arguments is an [`InequivalentQueue`].
    async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        role: QueueRole<'_>,
    ) -> Result<(), DeclareError> {
        channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.queue_type.arguments(role),
            )
            .await
            .map(drop)
            .map_err(
                |error| match InequivalentQueue::from_error(&error, name, self.queue_type) {
                    Some(inequivalent) => inequivalent.into(),
                    None => error.into(),
                },
            )
    }

    /// Every queue of the namespace: each consumer queue, its dead-letter queue and its retry
    /// queues.
    pub fn queues(&self) -> Vec<String> {
        SUBSCRIPTIONS
            .iter()
            .flat_map(|subscription| {
                [
                    self.queue(subscription),
                    self.dead_letter_queue(subscription),
                ]
                .into_iter()
                .chain(self.retry_queues(subscription))
            })
            .collect()
    }

    /// Deletes everything [`Topology::declare`] made, messages included. For tests and for
    /// tearing down a namespace (`eventsctl topology delete`); never called by the services.
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for queue in self.queues() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [self.exchange(), self.dead_letter_exchange()] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

/// What a queue holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery (not those delivered and unacknowledged).
    pub messages: u32,
    /// Consumers attached to it.
    pub consumers: u32,
}

/// What `queue` holds, by a passive declaration on `channel`: `None` when the queue does not
/// exist, which also closes `channel` (use one of its own).
pub async fn inspect(channel: &Channel, queue: &str) -> Result<Option<QueueState>, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(declared) => Ok(Some(QueueState {
            messages: declared.message_count(),
            consumers: declared.consumer_count(),
        })),
        Err(error) if is_soft(&error, AMQPSoftError::NOTFOUND) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether `exchange` exists, by a passive declaration on `channel`; when it does not, `channel`
/// is closed (use one of its own).
pub async fn exchange_exists(channel: &Channel, exchange: &str) -> Result<bool, lapin::Error> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    // A passive declaration ignores the kind.
    match channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => Ok(true),
        Err(error) if is_soft(&error, AMQPSoftError::NOTFOUND) => Ok(false),
        Err(error) => Err(error),
    }
}

fn is_access_refused(error: &lapin::Error) -> bool {
    is_soft(error, AMQPSoftError::ACCESSREFUSED)
}

fn is_soft(error: &lapin::Error, soft: AMQPSoftError) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp) if amqp.kind() == &AMQPErrorKind::Soft(soft)
    )
}

async fn close(channel: &Channel) {
    let _ = channel.close(200, "declared".into()).await;
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_prefixes_every_name() {
        let topology = Topology::new(Namespace::parse("t1").expect("valid"));
        let first = &SUBSCRIPTIONS[0];
        assert_eq!(topology.exchange(), "t1.events_exchange");
        assert_eq!(topology.dead_letter_exchange(), "t1.events_exchange.dlx");
        assert_eq!(topology.queue(first), "t1.order_service.user_created");
        assert_eq!(
            topology.dead_letter_queue(first),
            "t1.order_service.user_created.dlq"
        );
    }

    #[test]
    fn no_namespace_leaves_names_as_specified() {
        let topology = Topology::default();
        assert_eq!(topology.exchange(), "events_exchange");
        assert_eq!(
            topology.dead_letter_queue(&SUBSCRIPTIONS[2]),
            "order_service.payment_processed.dlq"
        );
    }

    #[test]
    fn each_queue_is_named_by_its_consumer_and_event() {
        for subscription in SUBSCRIPTIONS {
            assert_eq!(
                subscription.queue,
                format!("{}.{}", subscription.consumer, subscription.routing_key)
            );
        }
        assert_eq!(ORDER_SERVICE_USER_CREATED.routing_key, "user_created");
    }

    #[test]
    fn a_namespace_with_dots_or_spaces_is_rejected() {
        assert!(Namespace::parse("a.b").is_err());
        assert!(Namespace::parse("a b").is_err());
        assert!(Namespace::parse(&"x".repeat(65)).is_err());
        assert_eq!(
            Namespace::parse("").expect("empty is valid"),
            Namespace(None)
        );
    }
}
