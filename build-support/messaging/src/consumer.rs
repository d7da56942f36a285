//! The consumer runtime, written once for every consumer of the system.
//!
//! A delivery is decoded into an [`Incoming`] event (or sent straight to the dead-letter queue
//! when it cannot be), then applied in one database transaction that also records it in the
//! inbox and holds the outbox rows of the events it causes. The delivery is acked only after
//! that transaction committed; a duplicate finds its inbox row and is acked without effect.
//!
//! Failures are classified: a transient one is retried through the broker's delayed retry
//! queues (see [`crate::retry`]) a bounded number of times; a permanent one goes to the
//! dead-letter queue at once, with headers saying why. While a dependency is unavailable (the
//! gate is closed, e.g. the database is down), the consumer stops consuming instead of burning
//! through attempts, and resumes when the gate opens.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    },
    types::{AMQPValue, FieldTable},
};
use proto::Event;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    connection::{Bus, Connected},
    db_errors::{self, DbErrorClass},
    envelope::{CAUSATION_ID_HEADER, EventContext, TRACEPARENT_HEADER},
    inbox,
    publisher::Publisher,
    retry::{self, Failure, FailureKind, RetryPolicy},
    topology::Subscription,
    trace_context::{self, TraceParent},
};

/// Largest payload a consumer accepts; anything bigger is dead-lettered undecoded.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Pause before a message goes back to the queue because a dependency is unavailable, so a lost
/// database does not turn into a hot loop before the gate closes.
const UNAVAILABLE_PAUSE: Duration = Duration::from_secs(1);

/// A decoded event and the metadata it travelled with.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming<E> {
    pub event: E,
    /// The event id: the inbox key.
    pub message_id: Uuid,
    pub correlation_id: String,
    /// What caused this event, if the producer said.
    pub causation_id: Option<String>,
    /// The producer's trace context (a new trace when it sent none): this hop's parent.
    pub traceparent: TraceParent,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
}

impl<E> Incoming<E> {
    /// The context of the events this one causes: the same flow, caused by this message, in the
    /// current span's trace (a child of the producer's without OpenTelemetry).
    pub fn caused_context(&self) -> EventContext {
        EventContext {
            correlation_id: self.correlation_id.clone(),
            causation_id: self.message_id.to_string(),
            traceparent: trace_context::current().unwrap_or_else(|| self.traceparent.child()),
        }
    }
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency the service cannot work without is down (the database): the message goes
    /// back to the queue without counting an attempt, and consuming pauses until it is back.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Worth retrying later (a gateway timeout, a serialization conflict): retried with
    /// back-off, a bounded number of times.
    #[error("transient failure: {0:#}")]
    Transient(anyhow::Error),
    /// Retrying cannot help (a violated invariant, a permanent gateway failure): the message goes
    /// to the dead-letter queue.
    #[error("permanent failure: {0:#}")]
    Permanent(anyhow::Error),
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        match db_errors::classify(&error) {
            DbErrorClass::Unavailable => Self::Unavailable(error.into()),
            DbErrorClass::Retry => Self::Transient(error.into()),
            DbErrorClass::Permanent => Self::Permanent(error.into()),
        }
    }
}

/// Parses an id field of an event; a malformed id is a permanent failure.
pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(raw)
        .map_err(|_| HandlerError::Permanent(anyhow::anyhow!("{field} {raw:?} is not a UUID")))
}

/// Applies one kind of event. It runs inside the consumer's transaction: everything it writes
/// (its effect, and the outbox rows of the events it causes) commits together with the inbox row.
pub trait Handler: Send + Sync + 'static {
    /// The event this handler consumes.
    type Event: Event + Send + Sync;

    fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<Self::Event>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Why a delivery could not be decoded; it is dead-lettered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("no message_id property")]
    MissingMessageId,
    #[error("message_id {0:?} is not a UUID")]
    InvalidMessageId(String),
    #[error("type {found:?} is not the expected {expected}")]
    UnexpectedType {
        expected: &'static str,
        found: String,
    },
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("payload does not decode: {0}")]
    Undecodable(String),
}

/// Decodes a delivery as `E`, checking the metadata SPEC §4 requires.
pub fn decode<E: Event>(delivery: &Delivery) -> Result<Incoming<E>, DecodeError> {
    let properties = &delivery.properties;
    let raw_id = properties
        .message_id()
        .as_ref()
        .ok_or(DecodeError::MissingMessageId)?
        .as_str();
    let message_id =
        Uuid::parse_str(raw_id).map_err(|_| DecodeError::InvalidMessageId(raw_id.to_owned()))?;
    let kind = properties.kind().as_ref().map(|k| k.as_str()).unwrap_or("");
    if kind != E::TYPE_NAME {
        return Err(DecodeError::UnexpectedType {
            expected: E::TYPE_NAME,
            found: kind.to_owned(),
        });
    }
    if delivery.data.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(delivery.data.len()));
    }
    let event = E::decode(delivery.data.as_slice())
        .map_err(|error| DecodeError::Undecodable(error.to_string()))?;

    let headers = properties.headers().as_ref();
    let header = |name: &str| headers.and_then(|h| string_value(h, name));
    Ok(Incoming {
        event,
        message_id,
        correlation_id: properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| message_id.to_string()),
        causation_id: header(CAUSATION_ID_HEADER),
        traceparent: header(TRACEPARENT_HEADER)
            .as_deref()
            .and_then(TraceParent::parse)
            .unwrap_or_else(TraceParent::new_root),
        redelivered: delivery.redelivered,
    })
}

fn string_value(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.to_string()),
        _ => None,
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Duplicate,
}

/// How a consuming session on one channel ended.
enum Session {
    /// Asked to stop.
    Stopped,
    /// The gate closed: wait until it opens.
    Paused,
}

/// Consumes one queue with a handler, following the bus through reconnects.
#[derive(Debug)]
pub struct EventConsumer<H> {
    name: &'static str,
    subscription: Subscription,
    pool: PgPool,
    bus: Bus,
    handler: Arc<H>,
    prefetch: u16,
    workers: usize,
    retry: RetryPolicy,
    gate: watch::Receiver<bool>,
}

impl<H: Handler> EventConsumer<H> {
    /// A consumer named `name` (the inbox key, e.g. `order_service`) of `subscription`'s queue.
    pub fn new(
        name: &'static str,
        subscription: Subscription,
        pool: PgPool,
        bus: Bus,
        handler: H,
    ) -> Self {
        Self {
            name,
            subscription,
            pool,
            bus,
            handler: Arc::new(handler),
            prefetch: 16,
            workers: 4,
            retry: RetryPolicy::default(),
            gate: watch::channel(true).1,
        }
    }

    /// Unacknowledged deliveries the broker may push to each worker.
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Workers, each with its own channel, handling deliveries in parallel.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// The back-off delays of retries after transient failures.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Consume only while `gate` is `true` (e.g. while the database is reachable).
    pub fn with_gate(mut self, gate: watch::Receiver<bool>) -> Self {
        self.gate = gate;
        self
    }

    /// Consumes until `stop` is cancelled. Each worker finishes (acks or requeues) the delivery
    /// it is handling, then closes its channel, which returns its unacked prefetch to the queue.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let workers = (0..this.workers).map(|worker| {
            let this = this.clone();
            let stop = stop.clone();
            async move { this.work(worker, stop).await }
        });
        futures_util::future::join_all(workers).await;
        tracing::info!(
            consumer = this.name,
            queue = this.subscription.queue,
            "consumer stopped"
        );
    }

    async fn work(&self, worker: usize, stop: CancellationToken) {
        let mut bus = self.bus.watch();
        let mut gate = self.gate.clone();
        loop {
            let connected = bus.borrow_and_update().clone();
            let open = *gate.borrow_and_update();
            if let (Some(connected), true) = (connected, open) {
                match self.consume(&connected, &mut gate, &stop).await {
                    Ok(Session::Stopped) => return,
                    Ok(Session::Paused) => tracing::warn!(
                        consumer = self.name,
                        worker,
                        "a dependency is unavailable; consuming paused"
                    ),
                    Err(error) => tracing::warn!(
                        consumer = self.name,
                        worker,
                        error = format!("{error:#}"),
                        "consuming stopped; resuming after reconnect"
                    ),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = bus.changed() => if changed.is_err() { return },
                changed = gate.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(UNAVAILABLE_PAUSE) => {}
            }
        }
    }

    /// Consumes on a fresh channel until `stop`, the gate closing, or the channel failing.
    async fn consume(
        &self,
        connected: &Connected,
        gate: &mut watch::Receiver<bool>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Session> {
        let channel = connected.connection.create_channel().await?;
        let queue = self.bus.topology().queue(&self.subscription);
        self.retry.declare(&channel, &queue).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::debug!(consumer = self.name, %queue, prefetch = self.prefetch, "consuming");
        let session = loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break Session::Stopped,
                changed = gate.changed() => {
                    if changed.is_err() || !*gate.borrow_and_update() {
                        break Session::Paused;
                    }
                    continue;
                }
                next = deliveries.next() => next,
            };
            match next {
                Some(Ok(delivery)) => self.process(delivery, &connected.publisher).await,
                Some(Err(error)) => return Err(error.into()),
                None => anyhow::bail!("the broker cancelled the consumer"),
            }
        };
        // Closing the channel hands the unacked prefetch back to the queue.
        close(&channel).await;
        Ok(session)
    }

    async fn process(&self, delivery: Delivery, publisher: &Publisher) {
        let attempts = retry::attempts(&delivery);
        let message = match decode::<H::Event>(&delivery) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(consumer = self.name, %error, "undecodable message; dead-lettering it");
                metrics::counter!(
                    "events_consumed_total",
                    "consumer" => self.name, "type" => H::Event::TYPE_NAME, "outcome" => "undecodable"
                )
                .increment(1);
                self.dead_letter(
                    &delivery,
                    publisher,
                    FailureKind::Undecodable,
                    attempts,
                    &error,
                )
                .await;
                return;
            }
        };
        // The span continues the producer's trace; everything the handler logs carries the ids.
        let span = tracing::info_span!(
            "process",
            consumer = self.name,
            event_type = H::Event::TYPE_NAME,
            message_id = %message.message_id,
            correlation_id = %message.correlation_id,
            redelivered = delivery.redelivered,
        );
        trace_context::set_parent(&span, &message.traceparent);
        self.apply_and_settle(&delivery, publisher, message, attempts)
            .instrument(span)
            .await;
    }

    async fn apply_and_settle(
        &self,
        delivery: &Delivery,
        publisher: &Publisher,
        message: Incoming<H::Event>,
        attempts: u32,
    ) {
        let started = std::time::Instant::now();
        let applied = self.apply(&message).await;
        self.observe(&message, started.elapsed(), &applied);
        match applied {
            Ok(Outcome::Applied) => settle(ack(delivery)).await,
            Ok(Outcome::Duplicate) => {
                tracing::info!("duplicate message; acknowledged without effect");
                settle(ack(delivery)).await;
            }
            Err(HandlerError::Permanent(error)) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "cannot apply message; dead-lettering it"
                );
                self.dead_letter(
                    delivery,
                    publisher,
                    FailureKind::Permanent,
                    attempts + 1,
                    &error,
                )
                .await;
            }
            Err(HandlerError::Transient(error)) => {
                let attempt = attempts + 1;
                match self.retry.delay(attempt) {
                    Some(delay) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            attempt,
                            ?delay,
                            "transient failure; retrying later"
                        );
                        self.retry_later(delivery, publisher, attempt, delay, &error)
                            .await;
                    }
                    None => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            attempt,
                            "transient failure, out of retries; dead-lettering it"
                        );
                        self.dead_letter(
                            delivery,
                            publisher,
                            FailureKind::RetriesExhausted,
                            attempt,
                            &error,
                        )
                        .await;
                    }
                }
            }
            Err(HandlerError::Unavailable(error)) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "dependency unavailable; requeueing"
                );
                tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                settle(requeue(delivery)).await;
            }
        }
    }

    /// Records what became of a message: its outcome, how long the handler took and, once applied,
    /// how old the event was (from its time-ordered UUIDv7 id, millisecond-precise).
    fn observe(
        &self,
        message: &Incoming<H::Event>,
        took: Duration,
        applied: &Result<Outcome, HandlerError>,
    ) {
        let outcome = match applied {
            Ok(Outcome::Applied) => "applied",
            Ok(Outcome::Duplicate) => "duplicate",
            Err(HandlerError::Transient(_)) => "retried",
            Err(HandlerError::Permanent(_)) => "dead_lettered",
            Err(HandlerError::Unavailable(_)) => "requeued",
        };
        let (consumer, kind) = (self.name, H::Event::TYPE_NAME);
        metrics::counter!("events_consumed_total", "consumer" => consumer, "type" => kind, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("event_handler_duration_seconds", "consumer" => consumer, "type" => kind)
            .record(took.as_secs_f64());
        if matches!(applied, Ok(Outcome::Applied))
            && let Some(age) = event_age(message.message_id)
        {
            metrics::histogram!("event_end_to_end_age_seconds", "consumer" => consumer, "type" => kind)
                .record(age.as_secs_f64());
        }
    }

    /// The inbox row, the handler's effect and its outbox rows, in one transaction.
    async fn apply(&self, message: &Incoming<H::Event>) -> Result<Outcome, HandlerError> {
        let mut tx = self.pool.begin().await?;
        if !inbox::record(&mut tx, self.name, message.message_id).await? {
            return Ok(Outcome::Duplicate);
        }
        self.handler.handle(&mut tx, message).await?;
        tx.commit().await?;
        Ok(Outcome::Applied)
    }

    /// Re-publishes to the retry queue for `delay`, then acks; requeues if that fails.
    async fn retry_later(
        &self,
        delivery: &Delivery,
        publisher: &Publisher,
        attempt: u32,
        delay: Duration,
        error: &(dyn std::fmt::Display + Sync),
    ) {
        let failure = Failure {
            consumer: self.name,
            attempts: attempt,
            kind: None,
            message: error.to_string(),
            at: chrono::Utc::now(),
        };
        let queue = RetryPolicy::retry_queue(&self.bus.topology().queue(&self.subscription), delay);
        match publisher
            .forward("", &queue, &delivery.data, failure.annotate(delivery))
            .await
        {
            Ok(()) => settle(ack(delivery)).await,
            Err(error) => {
                tracing::warn!(%error, "cannot schedule the retry; requeueing");
                tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                settle(requeue(delivery)).await;
            }
        }
    }

    /// Re-publishes to the dead-letter queue with the failure headers, then acks. If that fails,
    /// rejects it, which the queue dead-letters without the headers: never back to the queue.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        publisher: &Publisher,
        kind: FailureKind,
        attempts: u32,
        error: &(dyn std::fmt::Display + Sync),
    ) {
        metrics::counter!("dead_letters_total", "consumer" => self.name, "kind" => kind.as_str())
            .increment(1);
        let failure = Failure {
            consumer: self.name,
            attempts,
            kind: Some(kind),
            message: error.to_string(),
            at: chrono::Utc::now(),
        };
        let topology = self.bus.topology();
        match publisher
            .forward(
                &topology.dead_letter_exchange(),
                &topology.queue(&self.subscription),
                &delivery.data,
                failure.annotate(delivery),
            )
            .await
        {
            Ok(()) => settle(ack(delivery)).await,
            Err(error) => {
                tracing::warn!(%error, "cannot annotate the dead letter; rejecting it instead");
                settle(reject(delivery)).await;
            }
        }
    }
}
/// How long ago a UUIDv7 id was minted; `None` for other ids or clock skew.
fn event_age(message_id: Uuid) -> Option<Duration> {
    let (seconds, nanos) = message_id.get_timestamp()?.to_unix();
    let minted = std::time::UNIX_EPOCH + Duration::new(seconds, nanos);
    std::time::SystemTime::now().duration_since(minted).ok()
}

async fn ack(delivery: &Delivery) -> Result<bool, lapin::Error> {
    delivery.ack(BasicAckOptions::default()).await
}

/// To the dead-letter queue, through the queue's dead-letter exchange.
async fn reject(delivery: &Delivery) -> Result<bool, lapin::Error> {
    delivery.reject(BasicRejectOptions { requeue: false }).await
}

async fn requeue(delivery: &Delivery) -> Result<bool, lapin::Error> {
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
}

/// A failed ack or nack means the channel is gone (lapin then reports the delivery as not
/// settled): the broker redelivers the message, and the inbox makes that harmless.
async fn settle(outcome: impl Future<Output = Result<bool, lapin::Error>>) {
    match outcome.await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "the channel closed before the delivery was settled; the broker will redeliver it"
        ),
        Err(error) => {
            tracing::warn!(%error, "could not settle the delivery; the broker will redeliver it")
        }
    }
}

async fn close(channel: &Channel) {
    if let Err(error) = channel.close(200, "consumer stopping".into()).await {
        tracing::debug!(%error, "closing the consumer channel");
    }
}
