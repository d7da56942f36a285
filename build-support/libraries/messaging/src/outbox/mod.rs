//! The transactional outbox and its relay.
//!
//! An event is written to the outbox in the caller's transaction, so it exists exactly when the
//! domain change does. The services write through a [`Dispatcher`]: once the transaction
//! committed, the rows go straight to the process's publisher (see [`dispatch`]). [`enqueue`]
//! and [`enqueue_all`] write rows due at once for any relay, with a NOTIFY.
//!
//! The [`OutboxRelay`] publishes what is dispatched to it, and is the recovery path for every
//! other row: it claims due rows with `for update skip locked` (so several relays never publish
//! the same row at once), publishes the batch with confirms awaited together, deletes the rows
//! the broker acked and reschedules the rest with back-off, all in the claiming transaction. A
//! relay that dies before its commit leaves its rows in place, and they are published again
//! under the same `message_id`.

pub mod dispatch;

use std::{future::Future, pin::Pin, time::Duration};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream::FuturesUnordered};
use sqlx::{PgConnection, PgExecutor, PgPool, postgres::PgListener};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use self::dispatch::{DISPATCH_LEASE, Dispatcher};
use crate::{
    connection::{Bus, Connected},
    envelope::Envelope,
    publisher::{PublishError, Publisher},
};

/// The NOTIFY channel that wakes the relays.
const NOTIFY_CHANNEL: &str = "outbox";
/// Relay passes in flight at once, each in its own transaction.
const PIPELINE: usize = 3;
/// Every row the relay deletes leaves a dead tuple that slows the claim query until vacuumed.
/// By default the relay vacuums the outbox itself after this many deletions, so a burst does not
/// slow the next minutes (autovacuum may be slow, or off).
const VACUUM_AFTER_ROWS: usize = 10_000;
/// How long a stopped relay keeps publishing what the writers still commit.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the confirms of dispatched rows are gathered before their rows are deleted, in one
/// statement for all of them: under load, one delete for many passes instead of one each. The
/// rows stay leased meanwhile (far shorter than [`DISPATCH_LEASE`]), so no relay takes them.
pub const REMOVE_DELAY: Duration = Duration::from_millis(20);
/// Longest back-off between two attempts at one row.
const MAX_BACKOFF_SECS: f64 = 30.0;

/// Writes `envelope` to the outbox in the caller's transaction, due at once for any relay.
pub async fn enqueue(
    connection: &mut PgConnection,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    enqueue_all(connection, std::slice::from_ref(envelope)).await
}

/// Writes every envelope to the outbox in the caller's transaction, in one statement, due at
/// once: the relays are woken by a NOTIFY when the transaction commits.
pub async fn enqueue_all(
    connection: &mut PgConnection,
    envelopes: &[Envelope],
) -> Result<(), sqlx::Error> {
    if envelopes.is_empty() {
        return Ok(());
    }
    insert(&mut *connection, envelopes, Duration::ZERO).await?;
    // Delivered at commit; several in one transaction make one notification.
    sqlx::query("select pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(connection)
        .await?;
    Ok(())
}

/// Inserts the rows in one statement, due once `lease` is over. A failure is the caller's to
/// log: it fails the caller's transaction.
#[tracing::instrument(skip_all, fields(events = envelopes.len()))]
async fn insert(
    connection: &mut PgConnection,
    envelopes: &[Envelope],
    lease: Duration,
) -> Result<(), sqlx::Error> {
    if envelopes.is_empty() {
        return Ok(());
    }
    // One array per column; `unnest` zips them back into rows.
    let column = |field: fn(&Envelope) -> String| envelopes.iter().map(field).collect::<Vec<_>>();
    let payloads: Vec<&[u8]> = envelopes.iter().map(|e| e.payload.as_slice()).collect();
    sqlx::query(
        "insert into outbox \
         (message_id, event_type, routing_key, payload, correlation_id, causation_id, traceparent, \
          occurred_at, next_attempt_at) \
         select rows.*, now() + make_interval(secs => $9) \
         from unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[], \
                     $7::text[], $8::timestamptz[]) as rows",
    )
    .bind(envelopes.iter().map(|e| e.message_id).collect::<Vec<_>>())
    .bind(column(|e| e.event_type.clone()))
    .bind(column(|e| e.routing_key.clone()))
    .bind(payloads)
    .bind(column(|e| e.correlation_id.clone()))
    .bind(column(|e| e.causation_id.clone()))
    .bind(column(|e| e.traceparent.clone()))
    .bind(envelopes.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(lease.as_secs_f64())
    .execute(connection)
    .await?;
    Ok(())
}

/// Locks up to `limit` due rows, oldest first, skipping rows another relay holds. The locks last
/// until the caller's transaction ends.
pub async fn claim_due(
    connection: &mut PgConnection,
    limit: usize,
) -> Result<Vec<Envelope>, sqlx::Error> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "select message_id, event_type, routing_key, payload, correlation_id, causation_id, \
                traceparent, occurred_at \
         from outbox \
         where next_attempt_at <= now() \
         order by next_attempt_at, occurred_at \
         limit $1 \
         for update skip locked",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(connection)
    .await?;
    Ok(rows.into_iter().map(Envelope::from).collect())
}

/// Deletes the rows of `message_ids` (published ones) in the caller's transaction.
pub async fn remove(
    connection: &mut PgConnection,
    message_ids: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from outbox where message_id = any($1)")
        .bind(message_ids)
        .execute(connection)
        .await?;
    Ok(())
}

/// Deletes the rows of `message_ids` (published ones) on their own, outside any claim: what a
/// dispatch does once the broker confirmed them. How many there were.
pub async fn remove_published(pool: &PgPool, message_ids: &[Uuid]) -> Result<usize, sqlx::Error> {
    if message_ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query("delete from outbox where message_id = any($1)")
        .bind(message_ids)
        .execute(pool)
        .await?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}

/// What waits in the outbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxStats {
    /// Rows not yet published.
    pub pending: i64,
    /// How long the oldest row has waited; `None` when the outbox is empty.
    pub oldest_age: Option<Duration>,
}

/// Counts the outbox and ages its oldest row.
pub async fn stats(pool: &PgPool) -> Result<OutboxStats, sqlx::Error> {
    let (pending, oldest_age): (i64, Option<f64>) = sqlx::query_as(
        "select count(*), extract(epoch from now() - min(occurred_at))::float8 from outbox",
    )
    .fetch_one(pool)
    .await?;
    Ok(OutboxStats {
        pending,
        oldest_age: oldest_age.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
    })
}

/// How many rows are waiting to be published.
pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(pool)
        .await
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    message_id: Uuid,
    event_type: String,
    routing_key: String,
    payload: Vec<u8>,
    correlation_id: String,
    causation_id: String,
    traceparent: String,
    occurred_at: DateTime<Utc>,
}

impl From<OutboxRow> for Envelope {
    fn from(row: OutboxRow) -> Self {
        Self {
            message_id: row.message_id,
            event_type: row.event_type,
            routing_key: row.routing_key,
            payload: row.payload,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
            traceparent: row.traceparent,
            occurred_at: row.occurred_at,
        }
    }
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows the broker acked: deleted by the pass, or for dispatched rows, with the others
    /// confirmed within [`REMOVE_DELAY`].
    pub published: usize,
    /// Rows rescheduled with back-off.
    pub failed: usize,
}

/// Publishes the outbox of one database, until cancelled.
#[derive(Debug)]
pub struct OutboxRelay {
    pool: PgPool,
    bus: Bus,
    batch_size: usize,
    poll_interval: Duration,
    vacuum_after: usize,
    remove_delay: Duration,
    dispatcher: Dispatcher,
    dispatched: mpsc::Receiver<Vec<Envelope>>,
}

/// Which way a pass found its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Claimed, due, from the table.
    Claimed,
    /// Handed over by the [`Dispatcher`].
    Dispatched,
    /// Dispatched rows the broker confirmed, deleted.
    Removed,
}

/// A pass in flight, and what it did: with the dispatched rows the broker confirmed, which
/// are still to be deleted.
type Pass<'a> = Pin<
    Box<dyn Future<Output = (Found, Result<(RelayOutcome, Vec<Uuid>), sqlx::Error>)> + Send + 'a>,
>;

/// Dispatched rows the broker confirmed, waiting to be deleted together.
#[derive(Debug)]
struct Confirmed {
    ids: Vec<Uuid>,
    /// How long the oldest waits.
    delay: Duration,
    /// When the oldest of them has waited `delay`.
    since: Option<tokio::time::Instant>,
}

impl Confirmed {
    fn new(delay: Duration) -> Self {
        Self {
            ids: Vec::new(),
            delay,
            since: None,
        }
    }

    fn add(&mut self, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        let delay = self.delay;
        self.since
            .get_or_insert_with(|| tokio::time::Instant::now() + delay);
        self.ids.extend(ids);
    }

    /// The ids to delete now: once the oldest has waited its delay, or once there are
    /// `enough`.
    fn take_if_ready(&mut self, enough: usize) -> Option<Vec<Uuid>> {
        let ready = self.ids.len() >= enough
            || self
                .since
                .is_some_and(|at| at <= tokio::time::Instant::now());
        if self.ids.is_empty() || !ready {
            return None;
        }
        self.since = None;
        Some(std::mem::take(&mut self.ids))
    }

    /// Resolves when the oldest has waited its delay; never while there is none.
    async fn due(&self) {
        match self.since {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

impl OutboxRelay {
    /// A relay with batches of 256 and a 2-second fallback poll.
    pub fn new(pool: PgPool, bus: Bus) -> Self {
        let (dispatcher, dispatched) = Dispatcher::channel(bus.app_id().to_owned());
        Self {
            pool,
            bus,
            batch_size: 256,
            poll_interval: Duration::from_secs(2),
            vacuum_after: VACUUM_AFTER_ROWS,
            remove_delay: REMOVE_DELAY,
            dispatcher,
            dispatched,
        }
    }

    /// Keeps dispatched rows from the relays' claims for `lease` (default [`DISPATCH_LEASE`]);
    /// for the dispatchers taken after this call.
    pub fn with_dispatch_lease(mut self, lease: Duration) -> Self {
        self.dispatcher.set_lease(lease);
        self
    }

    /// The dispatcher whose rows this relay publishes at once.
    pub fn dispatcher(&self) -> Dispatcher {
        self.dispatcher.clone()
    }

    /// At most this many rows per transaction.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Gathers the confirms of dispatched rows for `delay` (default [`REMOVE_DELAY`]) before
    /// deleting their rows together.
    pub fn with_remove_delay(mut self, delay: Duration) -> Self {
        self.remove_delay = delay;
        self
    }

    /// Vacuums the outbox after this many deleted rows (at least 1).
    pub fn with_vacuum_after(mut self, rows: usize) -> Self {
        self.vacuum_after = rows.max(1);
        self
    }

    /// Looks for due rows at least this often, notifications or not.
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Relays until `stop` is cancelled; the batches in flight, and what is dispatched until
    /// every dispatcher is dropped (for up to 5 s), are finished first. Publishes dispatched
    /// rows as they come; claims due rows on NOTIFY, on a (re)connection to the broker, and on
    /// the fallback poll.
    ///
    /// Passes are pipelined: while one waits for the broker's confirms, the next starts (up to
    /// a few at once); a claim takes only rows no pass holds. A row is thus published as soon
    /// as it is committed, not after the confirms of the batch before it. The dispatched rows
    /// the broker confirmed are deleted together, by one statement for the confirms of up to
    /// [`REMOVE_DELAY`] (or a batch of rows), instead of one per pass.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut listener = self.listen().await;
        let mut bus = self.bus.watch();
        let mut dispatched = std::mem::replace(&mut self.dispatched, mpsc::channel(1).1);
        // Only the tasks that write rows hold dispatchers now: the channel closes when the last
        // of them is done.
        self.dispatcher = Dispatcher::channel(self.bus.app_id().to_owned()).0;
        let mut passes: FuturesUnordered<Pass<'_>> = FuturesUnordered::new();
        // Whether rows may be due that no pass has looked for yet.
        let mut due = true;
        let mut deleted = 0;
        let mut confirmed = Confirmed::new(self.remove_delay);
        loop {
            if deleted >= self.vacuum_after {
                deleted = 0;
                // Beside the passes, never in their way.
                tokio::spawn(vacuum(self.pool.clone()));
            }
            if passes.len() < PIPELINE
                && let Some(ids) = confirmed.take_if_ready(self.batch_size)
            {
                passes.push(self.remove_pass(ids));
            }
            if due && passes.len() < PIPELINE {
                let connected = bus.borrow_and_update().clone();
                if let Some(Connected { publisher, .. }) = connected {
                    due = false;
                    let this = &self;
                    passes.push(Box::pin(async move {
                        let outcome = this.relay_batch(&publisher).await;
                        (Found::Claimed, outcome.map(|outcome| (outcome, Vec::new())))
                    }));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(first) = dispatched.recv(), if passes.len() < PIPELINE => {
                    let rows = dispatch::gather(first, &mut dispatched, self.batch_size);
                    passes.push(self.dispatch_pass(&bus, rows));
                }
                Some((found, outcome)) = passes.next(), if !passes.is_empty() => match outcome {
                    Ok((outcome, acked)) => {
                        confirmed.add(acked);
                        if found != Found::Dispatched {
                            deleted += outcome.published;
                        }
                        // A full batch: more may be waiting.
                        if found == Found::Claimed
                            && outcome.claimed == self.batch_size
                            && outcome.failed == 0
                        {
                            due = true;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay pass failed; retrying on the next wake-up");
                    }
                },
                _ = confirmed.due(), if passes.len() < PIPELINE => {}
                _ = bus_changed(&mut bus) => due = true,
                _ = notified(&mut listener) => due = true,
                _ = tokio::time::sleep(self.poll_interval) => due = true,
            }
        }
        // No more claims. The writers finish what they hold after the stop (a consumer its
        // batch, the API its calls): what they commit meanwhile goes out now rather than after
        // its lease, until the last of them is done, or the grace is over.
        let grace = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                rows = dispatched.recv() => match rows {
                    Some(first) => {
                        let rows = dispatch::gather(first, &mut dispatched, self.batch_size);
                        passes.push(self.dispatch_pass(&bus, rows));
                    }
                    None => break,
                },
                Some((_, outcome)) = passes.next(), if !passes.is_empty() => {
                    if let Ok((_, acked)) = outcome {
                        confirmed.add(acked);
                    }
                }
                _ = &mut grace => break,
            }
        }
        dispatched.close();
        while let Ok(first) = dispatched.try_recv() {
            let rows = dispatch::gather(first, &mut dispatched, self.batch_size);
            passes.push(self.dispatch_pass(&bus, rows));
        }
        while let Some((_, outcome)) = passes.next().await {
            if let Ok((_, acked)) = outcome {
                confirmed.add(acked);
            }
        }
        // What the broker confirmed is deleted before the relay ends: left, it would be
        // published again once its lease is over.
        if let Some(ids) = confirmed.take_if_ready(0) {
            let (_, outcome) = self.remove_pass(ids).await;
            if let Err(error) = outcome {
                tracing::warn!(%error, "cannot delete the confirmed outbox rows; a relay will publish them again");
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// A pass publishing dispatched rows, or, without a broker connection, handing them to the
    /// relay's claim.
    fn dispatch_pass<'a>(
        &'a self,
        bus: &watch::Receiver<Option<Connected>>,
        rows: Vec<Envelope>,
    ) -> Pass<'a> {
        let connected = bus.borrow().clone();
        Box::pin(async move {
            let outcome = match connected {
                Some(Connected { publisher, .. }) => {
                    dispatch::publish(&self.pool, &publisher, self.bus.app_id(), &rows).await
                }
                None => dispatch::release(&self.pool, &rows)
                    .await
                    .map(|()| (RelayOutcome::default(), Vec::new())),
            };
            (Found::Dispatched, outcome)
        })
    }

    /// A pass deleting dispatched rows the broker confirmed. A failure leaves them to their
    /// lease's end, after which a relay publishes them again (the same `message_id`).
    fn remove_pass<'a>(&'a self, ids: Vec<Uuid>) -> Pass<'a> {
        Box::pin(async move {
            let outcome = dispatch::remove_confirmed(&self.pool, self.bus.app_id(), &ids)
                .await
                .map(|deleted| {
                    let outcome = RelayOutcome {
                        published: deleted,
                        ..RelayOutcome::default()
                    };
                    (outcome, Vec::new())
                });
            (Found::Removed, outcome)
        })
    }

    /// One pass: claim, publish, then delete or reschedule, in one transaction. A failure is
    /// the caller's to log (the relay's WARN).
    #[tracing::instrument(skip_all)]
    pub async fn relay_batch(&self, publisher: &Publisher) -> Result<RelayOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let batch = claim_due(&mut tx, self.batch_size).await?;
        if batch.is_empty() {
            return Ok(RelayOutcome::default());
        }
        let outcomes = publisher.publish_batch(&batch).await;

        let (published, failed) = sort_outcomes(self.bus.app_id(), &batch, outcomes);
        for (message_id, error) in &failed {
            reschedule(&mut *tx, *message_id, error).await?;
        }
        remove(&mut tx, &published).await?;
        tx.commit().await?;
        tracing::debug!(
            published = published.len(),
            failed = failed.len(),
            "outbox batch relayed"
        );
        Ok(RelayOutcome {
            claimed: batch.len(),
            published: published.len(),
            failed: failed.len(),
        })
    }

    async fn listen(&self) -> Option<PgListener> {
        let attempt = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match attempt.await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for outbox inserts; polling only");
                None
            }
        }
    }
}

/// Counts and logs what the broker made of each row: the ids it acked, and the others with why.
fn sort_outcomes(
    service: &str,
    rows: &[Envelope],
    outcomes: Vec<Result<(), PublishError>>,
) -> (Vec<Uuid>, Vec<(Uuid, String)>) {
    let mut published = Vec::with_capacity(rows.len());
    let mut failed = Vec::new();
    for (envelope, outcome) in rows.iter().zip(outcomes) {
        metrics::counter!(
            "events_published_total",
            "service" => service.to_owned(),
            "type" => envelope.event_type.clone(),
            "outcome" => if outcome.is_ok() { "acked" } else { "failed" },
        )
        .increment(1);
        match outcome {
            Ok(()) => published.push(envelope.message_id),
            Err(error) => {
                tracing::warn!(message_id = %envelope.message_id, %error, "publish failed; will retry");
                failed.push((envelope.message_id, error.to_string()));
            }
        }
    }
    (published, failed)
}

/// Reclaims the dead tuples of deleted rows; a failure only costs speed. Without `truncate`, which
/// would take the table's exclusive lock (and wait up to 5 s for it, stalling every writer).
async fn vacuum(pool: PgPool) {
    let started = std::time::Instant::now();
    match sqlx::query("vacuum (truncate false) outbox")
        .execute(&pool)
        .await
    {
        Ok(_) => tracing::debug!(took = ?started.elapsed(), "outbox vacuumed"),
        Err(error) => tracing::warn!(%error, "cannot vacuum the outbox"),
    }
}

/// Exponential back-off per attempt: 1 s, 2 s, 4 s … capped at 30 s. The exponent is capped too
/// (`power(2, 1024)` overflows a double), and so is the count.
async fn reschedule(
    executor: impl PgExecutor<'_>,
    message_id: Uuid,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update outbox set attempts = least(attempts, 1000000) + 1, last_error = $2, \
         next_attempt_at = now() + make_interval(secs => least(power(2, least(attempts, 16)), $3)) \
         where message_id = $1",
    )
    .bind(message_id)
    .bind(error)
    .bind(MAX_BACKOFF_SECS)
    .execute(executor)
    .await?;
    Ok(())
}

async fn bus_changed(bus: &mut watch::Receiver<Option<Connected>>) {
    if bus.changed().await.is_err() {
        // The supervisor is gone (shutting down): nothing will change any more.
        std::future::pending::<()>().await;
    }
}

async fn notified(listener: &mut Option<PgListener>) {
    match listener {
        Some(listener) => {
            if let Err(error) = listener.recv().await {
                // The listener reconnects on the next call; the poll covers the gap.
                tracing::debug!(%error, "outbox listener interrupted");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        None => std::future::pending().await,
    }
}
