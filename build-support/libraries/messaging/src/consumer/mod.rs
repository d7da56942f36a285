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
//! through attempts, and resumes when the gate opens. A batch that finds a dependency
//! unavailable while the gate is open is held and tried again after growing pauses, for up to
//! [`HOLD_BUDGET`], before it goes back to the queue: each return to a quorum queue counts
//! towards its delivery limit ([`crate::queues::DELIVERY_LIMIT`]), a pause does not.

mod admit;
mod apply;
mod batch;
mod failures;
mod handler;
mod hold;
mod ready;
mod settle;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use proto::Event;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use self::{
    apply::{Outcome, apply_batch},
    handler::{BatchFailure, BatchMessage, Handler, HandlerError, handle_alone, parse_id},
    ready::take_ready,
    settle::Unsettled,
};
use self::{
    batch::{Item, Pending},
    hold::Hold,
    settle::close,
};
pub use crate::envelope::{DecodeError, Incoming, MAX_PAYLOAD_BYTES, decode};
use crate::{
    activity::{Activity, Counter},
    connection::{Bus, Connected},
    outbox::Dispatcher,
    publisher::Publisher,
    retry::FailureKind,
    topology::{Consumes, Subscription},
    trace_context,
};

/// The first pause before a batch that found a dependency unavailable is tried again (then
/// doubling, up to [`LONGEST_HOLD_PAUSE`]), and the pause before it goes back to the queue, so a
/// lost database does not turn into a hot loop before the gate closes.
const UNAVAILABLE_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two tries of a held batch.
const LONGEST_HOLD_PAUSE: Duration = Duration::from_secs(8);
/// How long a batch is held, tried again, while a dependency is unavailable, before it goes back
/// to the queue: well within [`BATCH_TIMEOUT`].
pub const HOLD_BUDGET: Duration = Duration::from_secs(60);
/// How long applying and settling one batch may take before the worker gives it up and starts
/// over on a fresh channel: well past the confirm timeout of a dead letter or retry.
const BATCH_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an ack, nack or reject may take: the broker answers at once or the channel is gone.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a consumer (channel, retry queues, qos, consume) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

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
/// so batches grow with the load. Measured on two cores (build-support/docs/benchmark.md), more workers split
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
    gate: watch::Receiver<bool>,
    /// Cancelled when the consumer is asked to stop: a held batch is not held any longer.
    stop: CancellationToken,
    /// Where the events a batch caused go once committed; without, they wait for a relay.
    dispatcher: Option<Dispatcher>,
    /// The service's counts for its summary line: retries and dead letters.
    activity: Activity,
    /// The messages this consumer processed (applied, or found applied before), in `activity`.
    processed: Counter,
}

impl<H: Handler> EventConsumer<H> {
    /// A consumer of `queue` with `handler`, named after the queue's consumer (its inbox key,
    /// e.g. `order_service`). The queue is typed by its event, so a handler of another event
    /// does not compile:
    ///
    /// ```compile_fail
    /// # use messaging::{Bus, EventConsumer, topology::ORDER_SERVICE_USER_CREATED};
    /// # fn wrong(pool: sqlx::PgPool, bus: Bus, charges: impl messaging::Handler<Event = proto::order::v1::OrderCreated>) {
    /// // A handler of order_created on the queue of user_created:
    /// EventConsumer::new(ORDER_SERVICE_USER_CREATED, pool, bus, charges);
    /// # }
    /// ```
    ///
    /// while the same lines with the queue of its own event do:
    ///
    /// ```
    /// # use messaging::{Bus, EventConsumer, topology::PAYMENT_SERVICE_ORDER_CREATED};
    /// # fn right(pool: sqlx::PgPool, bus: Bus, charges: impl messaging::Handler<Event = proto::order::v1::OrderCreated>) {
    /// EventConsumer::new(PAYMENT_SERVICE_ORDER_CREATED, pool, bus, charges);
    /// # }
    /// ```
    pub fn new(queue: Consumes<H::Event>, pool: PgPool, bus: Bus, handler: H) -> Self {
        Self {
            name: queue.consumer,
            subscription: queue.subscription(),
            pool,
            bus,
            handler: Arc::new(handler),
            tuning: ConsumerTuning::default(),
            gate: watch::channel(true).1,
            stop: CancellationToken::new(),
            dispatcher: None,
            activity: Activity::default(),
            processed: Counter::default(),
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

    /// Hands the events each batch caused to `dispatcher` once committed.
    pub fn with_dispatcher(mut self, dispatcher: Dispatcher) -> Self {
        self.dispatcher = Some(dispatcher);
        self
    }

    /// Counts what the consumer does in `activity`, the service's summary: its processed
    /// messages under its queue's name, its retries and dead letters.
    pub fn with_activity(mut self, activity: Activity) -> Self {
        self.processed = activity.counter(self.subscription.queue);
        self.activity = activity;
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
        let this = Arc::new(Self {
            stop: stop.clone(),
            ..self
        });
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
                let ended = take_ready(&mut deliveries, &mut batch, self.tuning.batch_size);
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
        for delivery in deliveries.into_iter().map(Unsettled::new) {
            let Some((delivery, attempts)) = self.admit(delivery, publisher).await else {
                continue;
            };
            match decode::<H::Event>(delivery.delivery()) {
                Ok(message) => {
                    // The span continues the producer's trace; everything the handler logs
                    // carries the ids.
                    let span = tracing::info_span!(
                        "process",
                        consumer = self.name,
                        event_type = H::Event::TYPE_NAME,
                        message_id = %message.message_id,
                        correlation_id = %message.correlation_id,
                        redelivered = delivery.delivery().redelivered,
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
                    metrics::counter!(
                        "events_consumed_total",
                        "consumer" => self.name, "type" => H::Event::TYPE_NAME, "outcome" => "undecodable"
                    )
                    .increment(1);
                    self.dead_letter(
                        delivery,
                        publisher,
                        FailureKind::Undecodable,
                        attempts,
                        &error,
                    )
                    .await;
                }
            }
        }
        let mut hold = Hold::default();
        if let Some(batch) = self.prepare(decoded, publisher, &mut hold).await {
            self.apply_and_settle(batch, publisher, &mut hold).await;
        }
    }

    /// Runs the handler's first step for the batch, outside any transaction. What it failed on
    /// is settled alone; the rest is returned with its prepared results. While a dependency is
    /// unavailable the batch is held and tried again (see [`Hold`]); past that, the whole batch
    /// goes back to the queue (and `None` is returned).
    async fn prepare(
        &self,
        decoded: Vec<Pending<H::Event, ()>>,
        publisher: &Publisher,
        hold: &mut Hold,
    ) -> Option<Vec<Item<H>>> {
        if decoded.is_empty() {
            return None;
        }
        let messages: Vec<_> = decoded.iter().map(|pending| &pending.message).collect();
        let (prepared, took) = loop {
            let started = std::time::Instant::now();
            let prepared = self.handler.prepare(&self.pool, &messages).await;
            let took = started.elapsed();
            if prepared.len() != decoded.len() {
                // A handler bug; applying without its first step could do harm, so nothing is.
                tracing::error!(
                    consumer = self.name,
                    expected = decoded.len(),
                    got = prepared.len(),
                    "the handler prepared a different number of messages"
                );
                let error = anyhow::anyhow!("the handler's first step gave no result");
                self.requeue_unavailable(decoded, took, &error).await;
                return None;
            }
            let unavailable = prepared.iter().find_map(|result| match result {
                Err(HandlerError::Unavailable(error)) => Some(anyhow::anyhow!("{error:#}")),
                _ => None,
            });
            match unavailable {
                Some(error) if self.hold_on(hold, decoded.len(), &error).await => {}
                Some(error) => {
                    self.requeue_unavailable(decoded, took, &error).await;
                    return None;
                }
                None => break (prepared, took),
            }
        };
        let mut batch = Vec::with_capacity(decoded.len());
        for (pending, result) in decoded.into_iter().zip(prepared) {
            match result {
                Ok(prepared) => batch.push(pending.with_prepared(prepared)),
                Err(error) => {
                    let item = pending.with_prepared(H::Prepared::default());
                    self.observe(&item.message, took, Err(error.outcome()));
                    let span = item.span.clone();
                    self.settle_failure(item, error, publisher)
                        .instrument(span)
                        .await;
                }
            }
        }
        Some(batch)
    }
}
