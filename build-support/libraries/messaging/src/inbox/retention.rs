//! Inbox retention: deleting the inbox rows no redelivery can need any more, so
//! `processed_messages` stays bounded however long a service runs.
//!
//! A row must outlive every way its message comes back: the broker's redelivery (seconds), the
//! retry chain (`RETRY_DELAYS`), the outbox re-publishing after a lost confirm, and an operator
//! replaying a dead letter weeks later. `INBOX_RETENTION` says how long that is; a message that
//! still comes back after its row is gone is applied again, and the handlers' natural keys (one
//! order per user, one payment per order) make that harmless.
//!
//! Rows are deleted by id range. Message ids are UUIDv7 (`Envelope::new`): their leading 48 bits
//! are the minting time in milliseconds, so they sort by time, and the primary key
//! `(consumer, message_id)` holds a consumer's rows minted before the cut-off as one range of
//! the index, oldest first. `processed_at` has no index, and one would cost every consumer's
//! insert. Each statement walks that range from where the last one stopped and deletes at most
//! a batch, so no statement scans the table or holds many locks.
//!
//! `processed_at` still guards each row: a message minted long ago but applied lately (a dead
//! letter replayed today) keeps its row for the whole retention. An id that is not UUIDv7 (no
//! producer of this system mints one) carries no time: it is deleted once old only if its bits
//! sort below the cut-off, and kept otherwise.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Rows one statement deletes at most.
pub const BATCH_SIZE: u32 = 1000;
/// The pause between two statements of a pass, so the consumers' inserts are never kept waiting.
const BATCH_PAUSE: Duration = Duration::from_millis(100);
/// Longest time between two passes.
const MAX_PERIOD: Duration = Duration::from_secs(60);
/// The first pass waits this long after start (or one period, if shorter), so it does not
/// compete with the backlog a starting service takes up.
const FIRST_PASS_DELAY: Duration = Duration::from_secs(10);

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Rows deleted.
    pub rows: u64,
    /// Delete statements run, each of at most one batch.
    pub statements: u64,
}

/// Deletes the inbox rows of some consumers once they are older than the retention.
#[derive(Debug, Clone)]
pub struct InboxRetention {
    pool: PgPool,
    consumers: BTreeSet<&'static str>,
    retention: Duration,
    batch_size: u32,
}

impl InboxRetention {
    /// Keeps the inbox rows of `consumers` (inbox keys, e.g. `order_service`) for `retention`.
    pub fn new(
        pool: PgPool,
        consumers: impl IntoIterator<Item = &'static str>,
        retention: Duration,
    ) -> Self {
        Self {
            pool,
            consumers: consumers.into_iter().collect(),
            retention,
            batch_size: BATCH_SIZE,
        }
    }

    /// Deletes at most `rows` per statement instead of [`BATCH_SIZE`].
    pub fn with_batch_size(mut self, rows: u32) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// The time between two passes: a quarter of the retention, from 1 s to a minute, so a row
    /// lives at most a quarter longer than the retention, and a pass usually finds little to do.
    pub fn period(&self) -> Duration {
        period_of(self.retention)
    }

    /// Runs a pass shortly after start and then every [`period`](Self::period), until `stop`
    /// (which also ends a pass between two statements). A failed pass (the database is down)
    /// is logged, and the next one tries again.
    pub async fn run(self, stop: CancellationToken) {
        if self.consumers.is_empty() {
            return;
        }
        let mut wait = FIRST_PASS_DELAY.min(self.period());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let swept = tokio::select! {
                () = stop.cancelled() => return,
                swept = self.sweep() => swept,
            };
            match swept {
                Ok(swept) if swept.rows > 0 => {
                    tracing::info!(
                        rows = swept.rows,
                        statements = swept.statements,
                        "expired inbox rows deleted"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?self.period(), "cannot delete expired inbox rows");
                }
            }
            wait = self.period();
        }
    }

    /// One pass: deletes every row older than the retention, a batch per statement with a pause
    /// between them, until none is left.
    pub async fn sweep(&self) -> Result<Swept, sqlx::Error> {
        let mut swept = Swept::default();
        let Some(cutoff) = SystemTime::now().checked_sub(self.retention) else {
            return Ok(swept);
        };
        let below = lowest_id_at(cutoff);
        for &consumer in &self.consumers {
            let mut from = Uuid::nil();
            loop {
                let deleted = self.delete_batch(consumer, from, below).await?;
                let rows = deleted.len() as u64;
                swept.statements += 1;
                swept.rows += rows;
                metrics::counter!("inbox_rows_deleted_total", "consumer" => consumer)
                    .increment(rows);
                // A short batch ended the range; a full one may have stopped inside it.
                match deleted.into_iter().max() {
                    Some(last) if rows >= u64::from(self.batch_size) => from = last,
                    _ => break,
                }
                tokio::time::sleep(BATCH_PAUSE).await;
            }
        }
        Ok(swept)
    }

    /// Deletes at most a batch of `consumer`'s rows with ids in `from..below` that were
    /// processed longer than the retention ago; returns their ids. The range is one walk of the
    /// primary key in id order, stopped by the limit. Rows another instance's pass holds are
    /// skipped, not waited for.
    async fn delete_batch(
        &self,
        consumer: &str,
        from: Uuid,
        below: Uuid,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "delete from processed_messages where ctid = any(array( \
                 select ctid from processed_messages \
                 where consumer = $1 and message_id >= $2 and message_id < $3 \
                   and processed_at < now() - make_interval(secs => $4) \
                 order by message_id \
                 limit $5 \
                 for update skip locked)) \
             returning message_id",
        )
        .bind(consumer)
        .bind(from)
        .bind(below)
        .bind(self.retention.as_secs_f64())
        .bind(i64::from(self.batch_size))
        .fetch_all(&self.pool)
        .await
    }
}

fn period_of(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), MAX_PERIOD)
}

/// The lowest UUIDv7 of the millisecond `time` falls in: every UUIDv7 minted before it sorts
/// below it, every one minted at or after it does not.
pub fn lowest_id_at(time: SystemTime) -> Uuid {
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::{NoContext, Timestamp};

    fn minted_at(time: SystemTime) -> Uuid {
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch");
        Uuid::new_v7(Timestamp::from_unix(
            NoContext,
            since.as_secs(),
            since.subsec_nanos(),
        ))
    }

    #[test]
    fn ids_minted_before_a_time_sort_below_its_lowest_id_and_later_ones_do_not() {
        let cutoff = SystemTime::UNIX_EPOCH + Duration::from_millis(1_750_000_000_123);
        let bound = lowest_id_at(cutoff);

        for earlier in [
            Duration::from_millis(1),
            Duration::from_secs(1),
            Duration::from_secs(86_400 * 30),
        ] {
            assert!(minted_at(cutoff - earlier) < bound, "{earlier:?} before");
        }
        for later in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_secs(1),
        ] {
            assert!(minted_at(cutoff + later) >= bound, "{later:?} after");
        }
        assert_eq!(bound.get_version_num(), 7);
    }

    #[test]
    fn a_period_is_a_quarter_of_the_retention_within_a_second_and_a_minute() {
        assert_eq!(period_of(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(period_of(Duration::from_secs(120)), Duration::from_secs(30));
        assert_eq!(period_of(Duration::from_secs(30 * 86_400)), MAX_PERIOD);
    }
}
