//! The consumer runtime, written once for every consumer of the system.
//!
//! A delivery is decoded into an [`Incoming`] event (or sent straight to the dead-letter queue
//! when it cannot be), then applied in one database transaction that also records it in the
//! inbox and holds the outbox rows of the events it causes. The delivery is acked only after
//! that transaction committed; a duplicate finds its inbox row and is acked without effect.
//!
//! Deliveries are applied in micro-batches: whatever the broker has already pushed to a worker
//! (up to the batch size) is applied in one transaction, with one multi-row inbox insert and one
//! multi-row outbox insert, and acked with one `multiple` ack after the commit. Nothing waits
//! for a batch to fill: an idle system handles each message as it comes, a busy one pays one
//! commit for many. When one message of a batch fails, the others are applied again without it,
//! so a failure is settled for the message that caused it alone.
//!
//! A handler may have a first step that runs before the batch's transaction, outside it (see
//! [`Handler`]): an effect on another system, such as a charge, is made there, never inside a
//! transaction that may be rolled back or applied again, and its result is handed to the second
//! step, which runs in the batch's transaction. Applying a batch again never runs the first
//! step again.
//!
//! Failures are classified: a transient one is retried through the broker's delayed retry
//! queues (see [`crate::retry`]) a bounded number of times; a permanent one goes to the
//! dead-letter queue at once, with headers saying why. While a dependency is unavailable (the
//! gate is closed, e.g. the database is down), the consumer stops consuming instead of burning
//! through attempts, and resumes when the gate opens.

use std::{collections::VecDeque, future::Future, sync::Arc, time::Duration};

use futures_util::{FutureExt, StreamExt};
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
    envelope::{CAUSATION_ID_HEADER, Envelope, EventContext, TRACEPARENT_HEADER},
    inbox,
    limits::HeaderWeight,
    outbox,
    publisher::Publisher,
    retry::{Failure, FailureKind, RetryPolicy},
    topology::Subscription,
    trace_context::{self, TraceParent},
};

/// Largest payload a consumer accepts; anything bigger is dead-lettered undecoded.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Pause before a message goes back to the queue because a dependency is unavailable, so a lost
/// database does not turn into a hot loop before the gate closes.
const UNAVAILABLE_PAUSE: Duration = Duration::from_secs(1);
/// How long applying and settling one batch may take before the worker gives it up and starts
/// over on a fresh channel: well past the confirm timeout of a dead letter or retry.
const BATCH_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an ack, nack or reject may take: the broker answers at once or the channel is gone.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a consumer (channel, retry queues, qos, consume) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Applies one kind of event, in up to two steps.
///
/// [`Handler::prepare`] runs first, outside any transaction of the consumer's, once for each
/// delivery of a batch: the place for an effect outside the service's database (a call to
/// another system), which must never run inside a transaction that may be rolled back or applied
/// again. It records what it needs in transactions of its own and hands its result to
/// [`Handler::handle`]. A message it fails on is settled alone (retried, dead-lettered or
/// requeued), and the rest go on.
///
/// [`Handler::handle`] runs inside the consumer's transaction and returns the events the message
/// causes: its effect, the inbox row and those events' outbox rows commit together. The
/// transaction may hold other messages of the same batch; a handler must not commit it. When
/// another message of the batch fails, the batch is applied again without it, with the same
/// prepared results: `prepare` is never run twice for one delivery.
pub trait Handler: Send + Sync + 'static {
    /// The event this handler consumes.
    type Event: Event + Send + Sync;
    /// What [`Handler::prepare`] hands to [`Handler::handle`] for one message (`()` for a
    /// handler without a first step).
    type Prepared: Default + Send + Sync;

    /// The step outside the batch's transaction, for every message of a batch at once; the
    /// result at index `i` belongs to `messages[i]`. By default there is nothing to prepare.
    fn prepare(
        &self,
        pool: &PgPool,
        messages: &[&Incoming<Self::Event>],
    ) -> impl Future<Output = Vec<Result<Self::Prepared, HandlerError>>> + Send {
        let _ = pool;
        let prepared = messages.iter().map(|_| Ok(Self::Prepared::default()));
        std::future::ready(prepared.collect())
    }

    fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<Self::Event>,
        prepared: &Self::Prepared,
    ) -> impl Future<Output = Result<Vec<Envelope>, HandlerError>> + Send;
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

/// A decoded delivery on its way through a batch.
struct Pending<E, P> {
    delivery: Delivery,
    message: Incoming<E>,
    /// What the handler's first step found, once it ran.
    prepared: P,
    /// Attempts before this delivery, from its headers.
    attempts: u32,
    /// The message's span, a child of the producer's trace.
    span: tracing::Span,
}

impl<E> Pending<E, ()> {
    fn with_prepared<P>(self, prepared: P) -> Pending<E, P> {
        Pending {
            delivery: self.delivery,
            message: self.message,
            prepared,
            attempts: self.attempts,
            span: self.span,
        }
    }
}

/// A delivery of `H`'s batch with what its first step prepared.
type Item<H> = Pending<<H as Handler>::Event, <H as Handler>::Prepared>;

/// Why a batch did not commit: the handler failed on the message at index `at`, or (`None`) the
/// batch as a whole failed (its begin, inbox, outbox or commit).
struct BatchFailure {
    at: Option<usize>,
    error: HandlerError,
}

impl From<sqlx::Error> for BatchFailure {
    fn from(error: sqlx::Error) -> Self {
        Self {
            at: None,
            error: error.into(),
        }
    }
}

/// How a consuming session on one channel ended.
enum Session {
    /// Asked to stop.
    Stopped,
    /// The gate closed: wait until it opens.
    Paused,
}

/// How a consumer spreads its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerTuning {
    /// Workers, each with its own channel, applying batches in parallel.
    pub workers: usize,
    /// Unacknowledged deliveries the broker may push to each worker: the next batch arrives
    /// while one is applied.
    pub prefetch: u16,
    /// At most this many deliveries per transaction (1 turns batching off).
    pub batch_size: usize,
}

/// One worker per consumer: it takes everything the broker pushed ahead into one transaction,
/// so batches grow with the load. Measured on two cores (README, Benchmark), more workers split
/// the stream into smaller batches, more commits and more latency; they pay off only when a
/// handler waits on another system (the payment service, waiting on its gateway, runs four).
impl Default for ConsumerTuning {
    fn default() -> Self {
        Self {
            workers: 1,
            prefetch: 64,
            batch_size: 32,
        }
    }
}

/// Consumes one queue with a handler, following the bus through reconnects.
#[derive(Debug)]
pub struct EventConsumer<H> {
    name: &'static str,
    subscription: Subscription,
    pool: PgPool,
    bus: Bus,
    handler: Arc<H>,
    tuning: ConsumerTuning,
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
            tuning: ConsumerTuning::default(),
            retry: RetryPolicy::default(),
            gate: watch::channel(true).1,
        }
    }

    /// Workers, prefetch and batch size (each at least 1).
    pub fn with_tuning(mut self, tuning: ConsumerTuning) -> Self {
        self.tuning = ConsumerTuning {
            workers: tuning.workers.max(1),
            prefetch: tuning.prefetch.max(1),
            batch_size: tuning.batch_size.max(1),
        };
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

    /// Consumes until `stop` is cancelled. Each worker finishes (acks or requeues) the batch
    /// it is handling, then closes its channel, which returns its unacked prefetch to the queue.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let workers = (0..this.tuning.workers).map(|worker| {
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
                match self.consume(&connected, &mut bus, &mut gate, &stop).await {
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

    /// Consumes on a fresh channel until `stop`, the gate closing, the channel failing, or the
    /// bus replacing (or losing) its connection: a worker never waits on a dead connection.
    async fn consume(
        &self,
        connected: &Connected,
        bus: &mut watch::Receiver<Option<Connected>>,
        gate: &mut watch::Receiver<bool>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Session> {
        let queue = self.bus.topology().queue(&self.subscription);
        let setup = async {
            let channel = connected.connection.create_channel().await?;
            let dead_letter_exchange = self.bus.topology().dead_letter_exchange();
            self.retry
                .declare(&channel, &dead_letter_exchange, &queue)
                .await?;
            channel
                .basic_qos(self.tuning.prefetch, BasicQosOptions::default())
                .await?;
            let deliveries = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, anyhow::Error>((channel, deliveries))
        };
        let (channel, mut deliveries) =
            tokio::time::timeout(SETUP_TIMEOUT, setup)
                .await
                .map_err(|_| {
                    anyhow::anyhow!("the broker did not open the consumer within {SETUP_TIMEOUT:?}")
                })??;
        tracing::info!(consumer = self.name, %queue, tuning = ?self.tuning, "consuming");
        let mut batch = Vec::with_capacity(self.tuning.batch_size);
        let session = async {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break Ok(Session::Stopped),
                    changed = gate.changed() => {
                        if changed.is_err() || !*gate.borrow_and_update() {
                            break Ok(Session::Paused);
                        }
                        continue;
                    }
                    _ = bus.changed() => anyhow::bail!("the connection to the broker changed"),
                    next = deliveries.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => batch.push(delivery),
                    Some(Err(error)) => return Err(error.into()),
                    None => anyhow::bail!("the broker cancelled the consumer"),
                }
                // What the broker has already pushed joins the batch; nothing waits for more.
                let mut ended = None;
                while ended.is_none() && batch.len() < self.tuning.batch_size {
                    match deliveries.next().now_or_never() {
                        Some(Some(Ok(delivery))) => batch.push(delivery),
                        Some(Some(Err(error))) => ended = Some(anyhow::Error::from(error)),
                        Some(None) => {
                            ended = Some(anyhow::anyhow!("the broker cancelled the consumer"))
                        }
                        None => break,
                    }
                }
                let processing = self.process(std::mem::take(&mut batch), &connected.publisher);
                if tokio::time::timeout(BATCH_TIMEOUT, processing)
                    .await
                    .is_err()
                {
                    // Whatever hangs (a broker that went away mid-ack, a lock), the batch is
                    // abandoned: its transaction rolls back if it had not committed, its deliveries
                    // go back to the queue when the channel closes, and the inbox absorbs the
                    // redelivery.
                    anyhow::bail!("a batch took over {BATCH_TIMEOUT:?}; abandoned for redelivery");
                }
                if let Some(error) = ended {
                    return Err(error);
                }
            }
        }
        .await;
        // However the session ended, closing the channel hands its unacked deliveries back to
        // the queue: a channel left open on a live connection would hold them (and keep
        // receiving more) with nobody to settle them.
        close(&channel).await;
        session
    }

    /// Decodes a batch of deliveries (dead-lettering what does not decode), runs the handler's
    /// first step on the rest (settling alone what it fails on), applies what remains and
    /// settles every delivery.
    async fn process(&self, deliveries: Vec<Delivery>, publisher: &Publisher) {
        metrics::histogram!("consumer_batch_size", "consumer" => self.name)
            .record(deliveries.len() as f64);
        let mut decoded = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let Some(attempts) = self.admit(&delivery, publisher).await else {
                continue;
            };
            match decode::<H::Event>(&delivery) {
                Ok(message) => {
                    // The span continues the producer's trace; everything the handler logs
                    // carries the ids.
                    let span = tracing::info_span!(
                        "process",
                        consumer = self.name,
                        event_type = H::Event::TYPE_NAME,
                        message_id = %message.message_id,
                        correlation_id = %message.correlation_id,
                        redelivered = delivery.redelivered,
                    );
                    trace_context::set_parent(&span, &message.traceparent);
                    decoded.push(Pending {
                        delivery,
                        message,
                        prepared: (),
                        attempts,
                        span,
                    });
                }
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
                }
            }
        }
        if let Some(batch) = self.prepare(decoded, publisher).await {
            self.apply_and_settle(batch, publisher).await;
        }
    }

    /// Checks what a delivery carries before anything else touches it: headers too heavy to
    /// forward are rejected (the broker dead-letters the message, with `x-death`: re-publishing
    /// it with our headers could exceed `frame_max` and cost the connection), and an event from
    /// an untrusted producer is dead-lettered as `untrusted`. Returns the delivery's attempts so
    /// far (its header, at most the number of retries) when it may go on.
    async fn admit(&self, delivery: &Delivery, publisher: &Publisher) -> Option<u32> {
        let weight = HeaderWeight::of(delivery.properties.headers().as_ref());
        if !weight.forwardable() {
            tracing::warn!(
                consumer = self.name,
                depth = weight.depth,
                bytes = weight.bytes,
                "headers too deep or too big to forward; rejecting the message to the dead-letter queue"
            );
            let kind = FailureKind::OversizedHeaders;
            self.count_refused(kind);
            metrics::counter!("dead_letters_total", "consumer" => self.name, "kind" => kind.as_str())
                .increment(1);
            settle(reject(delivery)).await;
            return None;
        }
        let attempts = self.retry.attempts_of(delivery);
        if !self.bus.trusts(H::Event::ROUTING_KEY, &delivery.properties) {
            let producer = self.bus.producer_of(&delivery.properties);
            tracing::warn!(
                consumer = self.name,
                event_type = H::Event::TYPE_NAME,
                producer = ?producer,
                "event from a producer not trusted for it; dead-lettering it unapplied"
            );
            let error = format!(
                "{} is not trusted to produce {}",
                producer.as_deref().unwrap_or("a publisher without user_id"),
                H::Event::ROUTING_KEY
            );
            self.count_refused(FailureKind::Untrusted);
            self.dead_letter(
                delivery,
                publisher,
                FailureKind::Untrusted,
                attempts,
                &error,
            )
            .await;
            return None;
        }
        Some(attempts)
    }

    /// Counts a delivery refused before decoding, under its failure kind.
    fn count_refused(&self, kind: FailureKind) {
        metrics::counter!(
            "events_consumed_total",
            "consumer" => self.name, "type" => H::Event::TYPE_NAME, "outcome" => kind.as_str()
        )
        .increment(1);
    }

    /// Runs the handler's first step for the batch, outside any transaction. What it failed on
    /// is settled alone; the rest is returned with its prepared results. When a dependency is
    /// unavailable, the whole batch goes back to the queue (and `None` is returned).
    async fn prepare(
        &self,
        decoded: Vec<Pending<H::Event, ()>>,
        publisher: &Publisher,
    ) -> Option<Vec<Item<H>>> {
        if decoded.is_empty() {
            return None;
        }
        let started = std::time::Instant::now();
        let messages: Vec<_> = decoded.iter().map(|pending| &pending.message).collect();
        let prepared = self.handler.prepare(&self.pool, &messages).await;
        let took = started.elapsed();
        let unavailable = if prepared.len() == decoded.len() {
            prepared.iter().find_map(|result| match result {
                Err(HandlerError::Unavailable(error)) => Some(anyhow::anyhow!("{error:#}")),
                _ => None,
            })
        } else {
            // A handler bug; applying without its first step could do harm, so nothing is.
            tracing::error!(
                consumer = self.name,
                expected = decoded.len(),
                got = prepared.len(),
                "the handler prepared a different number of messages"
            );
            Some(anyhow::anyhow!("the handler's first step gave no result"))
        };
        if let Some(error) = unavailable {
            self.requeue_unavailable(&decoded, took, &error).await;
            return None;
        }
        let mut batch = Vec::with_capacity(decoded.len());
        for (pending, result) in decoded.into_iter().zip(prepared) {
            match result {
                Ok(prepared) => batch.push(pending.with_prepared(prepared)),
                Err(error) => {
                    let item = pending.with_prepared(H::Prepared::default());
                    self.observe(&item.message, took, Err(failure_outcome(&error)));
                    let span = item.span.clone();
                    self.settle_failure(item, error, publisher)
                        .instrument(span)
                        .await;
                }
            }
        }
        Some(batch)
    }

    /// Applies a batch in one transaction and acks it after the commit. A message the handler
    /// failed on is settled alone (retried, dead-lettered), and the rest applied again without
    /// it; a batch that failed as a whole is applied again one message at a time, to find the
    /// message at fault. Every delivery on the worker's channel before this batch is settled
    /// already, so the batch is acked with one `multiple` ack.
    async fn apply_and_settle(&self, batch: Vec<Item<H>>, publisher: &Publisher) {
        let mut queue = VecDeque::from([batch]);
        while let Some(mut batch) = queue.pop_front() {
            if batch.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let applied = self.apply(&batch).await;
            let took = started.elapsed();
            match applied {
                Ok(outcomes) => {
                    for (pending, outcome) in batch.iter().zip(outcomes) {
                        self.observe(&pending.message, took, Ok(outcome));
                        if outcome == Outcome::Duplicate {
                            pending.span.in_scope(|| {
                                tracing::info!("duplicate message; acknowledged without effect");
                            });
                        }
                    }
                    settle(ack_all(&batch)).await;
                }
                Err(BatchFailure {
                    error: HandlerError::Unavailable(error),
                    ..
                }) => {
                    // Everything not yet settled goes back to the queue.
                    let rest: Vec<_> = queue.drain(..).flatten().chain(batch).collect();
                    self.requeue_unavailable(&rest, took, &error).await;
                }
                Err(BatchFailure {
                    at: Some(at),
                    error,
                }) => {
                    let failed = batch.remove(at);
                    self.observe(&failed.message, took, Err(failure_outcome(&error)));
                    let span = failed.span.clone();
                    self.settle_failure(failed, error, publisher)
                        .instrument(span)
                        .await;
                    queue.push_front(batch);
                }
                Err(BatchFailure { at: None, error }) if batch.len() > 1 => {
                    tracing::debug!(
                        consumer = self.name,
                        batch = batch.len(),
                        error = format!("{error:#}"),
                        "batch failed; applying its messages one at a time"
                    );
                    queue.extend(batch.into_iter().map(|pending| vec![pending]));
                }
                Err(BatchFailure { at: None, error }) => {
                    if let Some(failed) = batch.pop() {
                        self.observe(&failed.message, took, Err(failure_outcome(&error)));
                        let span = failed.span.clone();
                        self.settle_failure(failed, error, publisher)
                            .instrument(span)
                            .await;
                    }
                }
            }
        }
    }

    /// Everything not yet settled goes back to the queue, after a pause, because a dependency
    /// is unavailable.
    async fn requeue_unavailable<P>(
        &self,
        rest: &[Pending<H::Event, P>],
        took: Duration,
        error: &anyhow::Error,
    ) {
        tracing::warn!(
            consumer = self.name,
            batch = rest.len(),
            error = format!("{error:#}"),
            "dependency unavailable; requeueing"
        );
        for pending in rest {
            self.observe(&pending.message, took, Err("requeued"));
        }
        tokio::time::sleep(UNAVAILABLE_PAUSE).await;
        settle(requeue_all(rest)).await;
    }

    /// Retries a failed message later, dead-letters it, or requeues it, as its failure says.
    async fn settle_failure(&self, failed: Item<H>, error: HandlerError, publisher: &Publisher) {
        let Pending {
            delivery, attempts, ..
        } = failed;
        match error {
            HandlerError::Permanent(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "cannot apply message; dead-lettering it"
                );
                self.dead_letter(
                    &delivery,
                    publisher,
                    FailureKind::Permanent,
                    attempts.saturating_add(1),
                    &error,
                )
                .await;
            }
            HandlerError::Transient(error) => {
                let attempt = attempts.saturating_add(1);
                match self.retry.delay(attempt) {
                    Some(delay) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            attempt,
                            ?delay,
                            "transient failure; retrying later"
                        );
                        self.retry_later(&delivery, publisher, attempt, delay, &error)
                            .await;
                    }
                    None => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            attempt,
                            "transient failure, out of retries; dead-lettering it"
                        );
                        self.dead_letter(
                            &delivery,
                            publisher,
                            FailureKind::RetriesExhausted,
                            attempt,
                            &error,
                        )
                        .await;
                    }
                }
            }
            HandlerError::Unavailable(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "dependency unavailable; requeueing"
                );
                tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                settle(requeue(&delivery)).await;
            }
        }
    }

    /// Records what became of a message: its outcome, how long applying its batch took and,
    /// once applied, how old the event was (from its time-ordered UUIDv7 id,
    /// millisecond-precise).
    fn observe(
        &self,
        message: &Incoming<H::Event>,
        took: Duration,
        outcome: Result<Outcome, &'static str>,
    ) {
        let label = match outcome {
            Ok(Outcome::Applied) => "applied",
            Ok(Outcome::Duplicate) => "duplicate",
            Err(label) => label,
        };
        let (consumer, kind) = (self.name, H::Event::TYPE_NAME);
        metrics::counter!("events_consumed_total", "consumer" => consumer, "type" => kind, "outcome" => label)
            .increment(1);
        metrics::histogram!("event_handler_duration_seconds", "consumer" => consumer, "type" => kind)
            .record(took.as_secs_f64());
        if outcome == Ok(Outcome::Applied)
            && let Some(age) = event_age(message.message_id)
        {
            metrics::histogram!("event_end_to_end_age_seconds", "consumer" => consumer, "type" => kind)
                .record(age.as_secs_f64());
        }
    }

    /// One transaction for the batch: its inbox rows in one insert, each new message's effect,
    /// and the outbox rows of everything they caused in one insert. Duplicates (already in the
    /// inbox, or twice in the batch) are skipped.
    async fn apply(&self, batch: &[Item<H>]) -> Result<Vec<Outcome>, BatchFailure> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = batch.iter().map(|p| p.message.message_id).collect();
        let mut fresh = inbox::record_all(&mut tx, self.name, &ids).await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut caused = Vec::new();
        for (at, pending) in batch.iter().enumerate() {
            if !fresh.remove(&pending.message.message_id) {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            let events = self
                .handler
                .handle(&mut tx, &pending.message, &pending.prepared)
                .instrument(pending.span.clone())
                .await
                .map_err(|error| BatchFailure {
                    at: Some(at),
                    error,
                })?;
            caused.extend(events);
            outcomes.push(Outcome::Applied);
        }
        outbox::enqueue_all(&mut tx, &caused).await?;
        tx.commit().await?;
        Ok(outcomes)
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
        let topology = self.bus.topology();
        let queue = RetryPolicy::retry_queue(&topology.queue(&self.subscription), delay);
        match publisher
            .forward(
                &topology.dead_letter_exchange(),
                &queue,
                &delivery.data,
                failure.annotate(delivery),
            )
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

/// The delivery of the batch the broker sent last: settling it with `multiple` settles the batch.
fn last<E, P>(batch: &[Pending<E, P>]) -> Option<&Delivery> {
    batch
        .iter()
        .map(|pending| &pending.delivery)
        .max_by_key(|delivery| delivery.delivery_tag)
}

/// Acks every delivery of `batch`, and every earlier one still unsettled on the channel (there is
/// none: a worker settles each batch before taking the next).
async fn ack_all<E, P>(batch: &[Pending<E, P>]) -> Result<bool, lapin::Error> {
    match last(batch) {
        Some(delivery) if batch.len() > 1 => delivery.ack(BasicAckOptions { multiple: true }).await,
        Some(delivery) => ack(delivery).await,
        None => Ok(true),
    }
}

/// Returns every delivery of `batch` to the queue, like [`ack_all`].
async fn requeue_all<E, P>(batch: &[Pending<E, P>]) -> Result<bool, lapin::Error> {
    match last(batch) {
        Some(delivery) => {
            delivery
                .nack(BasicNackOptions {
                    multiple: batch.len() > 1,
                    requeue: true,
                })
                .await
        }
        None => Ok(true),
    }
}

/// The `events_consumed_total` outcome of a failure.
fn failure_outcome(error: &HandlerError) -> &'static str {
    match error {
        HandlerError::Transient(_) => "retried",
        HandlerError::Permanent(_) => "dead_lettered",
        HandlerError::Unavailable(_) => "requeued",
    }
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
    match tokio::time::timeout(SETTLE_TIMEOUT, outcome).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::warn!(
            "the channel closed before the delivery was settled; the broker will redeliver it"
        ),
        Ok(Err(error)) => {
            tracing::warn!(%error, "could not settle the delivery; the broker will redeliver it")
        }
        Err(_) => tracing::warn!(
            "the broker did not take the settlement within {SETTLE_TIMEOUT:?}; it will redeliver"
        ),
    }
}

/// Closes a consumer's channel, waiting at most [`SETTLE_TIMEOUT`] (a stalled connection never
/// answers; the broker requeues the deliveries when it drops that connection).
async fn close(channel: &Channel) {
    match tokio::time::timeout(
        SETTLE_TIMEOUT,
        channel.close(200, "consumer stopping".into()),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "closing the consumer channel"),
        Err(_) => tracing::debug!("the broker did not confirm closing the consumer channel"),
    }
}
