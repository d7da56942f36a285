//! What a service did since its last summary, for the one INFO line an operator reads instead of
//! a line per message: the messages each consumer processed (and whatever else the service
//! counts, such as its CreateUser calls), the retries and the dead letters.
//!
//! The counts are atomics, bumped where the work is done and taken (reset to zero) by
//! [`report`] every `LOG_SUMMARY_INTERVAL`; an interval in which nothing happened logs nothing,
//! so an idle service stays silent.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// The counts of one service, shared by everything that counts for it. Clones count together.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    /// Named counts, in the order they were first asked for.
    named: Mutex<Vec<(&'static str, Counter)>>,
    retried: Counter,
    dead_lettered: Counter,
}

/// One count of an [`Activity`], e.g. the messages a consumer processed.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Counts `n` more.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// What was counted since the last take, and starts again from zero.
    fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

impl Activity {
    /// The count named `name` (a consumer's queue, `CreateUser`); asking twice for one name
    /// gives the same count.
    pub fn counter(&self, name: &'static str) -> Counter {
        let mut named = self.0.named.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter)) = named.iter().find(|(known, _)| *known == name) {
            return counter.clone();
        }
        let counter = Counter::default();
        named.push((name, counter.clone()));
        counter
    }

    /// A message was sent to a retry queue.
    pub fn retried(&self) {
        self.0.retried.add(1);
    }

    /// A message was sent to a dead-letter queue.
    pub fn dead_lettered(&self) {
        self.0.dead_lettered.add(1);
    }

    /// Everything counted since the last take; every count starts again from zero.
    pub fn take(&self) -> Summary {
        let named = self.0.named.lock().unwrap_or_else(|e| e.into_inner());
        Summary {
            counts: named
                .iter()
                .map(|(name, counter)| (*name, counter.take()))
                .collect(),
            retried: self.0.retried.take(),
            dead_lettered: self.0.dead_lettered.take(),
        }
    }
}

/// What an [`Activity`] counted over one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Each named count, in the order the counts were made.
    pub counts: Vec<(&'static str, u64)>,
    pub retried: u64,
    pub dead_lettered: u64,
}

impl Summary {
    /// The summary line for an interval of `window`, e.g.
    /// `in the last 60s: order_service.user_created=412 order_service.payment_processed=409
    /// retried=3 dead_lettered=0`; `None` when nothing was counted.
    pub fn line(&self, window: Duration) -> Option<String> {
        let total =
            self.counts.iter().map(|(_, n)| n).sum::<u64>() + self.retried + self.dead_lettered;
        if total == 0 {
            return None;
        }
        let mut line = format!("in the last {}s:", window.as_secs_f64().round());
        for (name, n) in &self.counts {
            line.push_str(&format!(" {name}={n}"));
        }
        line.push_str(&format!(
            " retried={} dead_lettered={}",
            self.retried, self.dead_lettered
        ));
        Some(line)
    }
}

/// Logs `activity`'s summary at INFO every `interval` (none while nothing happened), and what is
/// left when `stop` is cancelled. A zero `interval` logs nothing.
pub async fn report(activity: Activity, interval: Duration, stop: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    let mut since = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = ticks.tick() => false,
        };
        if let Some(line) = activity.take().line(since.elapsed()) {
            tracing::info!("{line}");
        }
        since = Instant::now();
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_names_every_count_with_the_retries_and_dead_letters() {
        // Arrange
        let activity = Activity::default();
        let created = activity.counter("order_service.user_created");
        let settled = activity.counter("order_service.payment_processed");
        created.add(410);
        activity.counter("order_service.user_created").add(2);
        settled.add(409);
        for _ in 0..3 {
            activity.retried();
        }

        // Act
        let summary = activity.take();

        // Assert
        assert_eq!(
            summary.line(Duration::from_millis(60_004)).as_deref(),
            Some(
                "in the last 60s: order_service.user_created=412 \
                 order_service.payment_processed=409 retried=3 dead_lettered=0"
            )
        );
    }

    #[test]
    fn a_take_starts_every_count_again_from_zero() {
        // Arrange
        let activity = Activity::default();
        activity.counter("CreateUser").add(5);
        activity.dead_lettered();
        let first = activity.take();

        // Act
        let second = activity.take();

        // Assert
        assert_eq!(first.counts, [("CreateUser", 5)]);
        assert_eq!(first.dead_lettered, 1);
        assert_eq!(
            second,
            Summary {
                counts: vec![("CreateUser", 0)],
                ..Summary::default()
            }
        );
    }

    #[test]
    fn nothing_counted_is_no_line() {
        let activity = Activity::default();
        activity.counter("order_service.user_created");

        assert_eq!(activity.take().line(Duration::from_secs(60)), None);
        assert_eq!(Summary::default().line(Duration::from_secs(60)), None);
    }

    #[test]
    fn a_dead_letter_alone_is_worth_a_line() {
        let summary = Summary {
            counts: vec![("payment_service.order_created", 0)],
            retried: 0,
            dead_lettered: 1,
        };

        assert_eq!(
            summary.line(Duration::from_secs(60)).as_deref(),
            Some("in the last 60s: payment_service.order_created=0 retried=0 dead_lettered=1")
        );
    }
}
