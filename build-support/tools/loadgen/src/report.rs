//! The numbers a run reports, and the progress line while it runs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::Observations;

/// p50, p90, p99 and max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles.
    pub(crate) fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort();
        let at = |p: f64| {
            let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1000.0
        };
        Self {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            max: at(100.0),
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) concurrency: usize,
    /// Calls started per second, when the run had a fixed rate.
    pub(crate) rate: Option<f64>,
    pub(crate) accepted: usize,
    pub(crate) rejected: u64,
    pub(crate) completed: usize,
    pub(crate) missing: usize,
    pub(crate) duplicated: usize,
    pub(crate) accepted_per_second: f64,
    pub(crate) completed_per_second: f64,
    pub(crate) rpc: Percentiles,
    pub(crate) end_to_end: Percentiles,
}

impl Report {
    pub(crate) fn new(
        sent: &HashMap<String, Instant>,
        completed: &HashMap<String, Vec<Instant>>,
        rpc_latencies: &[Duration],
        rejected: u64,
        started: Instant,
        created_in: Duration,
        concurrency: usize,
    ) -> Self {
        let mut end_to_end = Vec::new();
        let (mut missing, mut duplicated, mut last) = (0, 0, started);
        for (user, sent_at) in sent {
            match completed.get(user).map(Vec::as_slice) {
                None | Some([]) => missing += 1,
                Some(arrivals) => {
                    if arrivals.len() > 1 {
                        duplicated += 1;
                    }
                    end_to_end.push(arrivals[0].saturating_duration_since(*sent_at));
                    last = last.max(arrivals[0]);
                }
            }
        }
        let completed_count = end_to_end.len();
        let flows_window = last.saturating_duration_since(started).as_secs_f64();
        Self {
            concurrency,
            rate: None,
            accepted: sent.len(),
            rejected,
            completed: completed_count,
            missing,
            duplicated,
            accepted_per_second: sent.len() as f64 / created_in.as_secs_f64().max(f64::EPSILON),
            completed_per_second: completed_count as f64 / flows_window.max(f64::EPSILON),
            rpc: Percentiles::of(rpc_latencies.to_vec()),
            end_to_end: Percentiles::of(end_to_end),
        }
    }

    /// Every accepted user got exactly one payment_processed.
    pub(crate) fn consistent(&self) -> bool {
        self.missing == 0 && self.duplicated == 0
    }

    pub(crate) fn table(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!(
                "{name:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
                p.p50, p.p90, p.p99, p.max
            )
        };
        format!(
            "concurrency            {}{}\n\
             accepted calls         {} ({} rejected), {:.1}/s\n\
             completed flows        {}, {:.1}/s\n\
             consistency            {} missing, {} duplicated: {}\n\
             latency (ms)                 p50       p90       p99       max\n\
             {}{}",
            self.concurrency,
            self.rate
                .map(|rate| format!(", calls started at {rate}/s"))
                .unwrap_or_default(),
            self.accepted,
            self.rejected,
            self.accepted_per_second,
            self.completed,
            self.completed_per_second,
            self.missing,
            self.duplicated,
            if self.consistent() { "OK" } else { "FAILED" },
            row("CreateUser RPC", &self.rpc),
            row("end to end", &self.end_to_end),
        )
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let percentiles = |p: &Percentiles| json!({ "p50_ms": p.p50, "p90_ms": p.p90, "p99_ms": p.p99, "max_ms": p.max });
        json!({
            "concurrency": self.concurrency,
            "rate": self.rate,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "completed": self.completed,
            "missing": self.missing,
            "duplicated": self.duplicated,
            "consistent": self.consistent(),
            "accepted_per_second": self.accepted_per_second,
            "completed_per_second": self.completed_per_second,
            "rpc_latency": percentiles(&self.rpc),
            "end_to_end_latency": percentiles(&self.end_to_end),
        })
    }
}

/// Prints a progress line to stderr every 200 ms; never returns.
pub(crate) async fn progress(observations: Arc<Mutex<Observations>>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let (accepted, completed) = {
            let o = observations.lock().unwrap_or_else(|e| e.into_inner());
            (o.sent.len(), o.completed.len())
        };
        eprint!(
            "\r{:>6.1}s  accepted {accepted:>7}  completed {completed:>7}",
            started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }

    #[test]
    fn missing_and_duplicated_flows_are_inconsistent() {
        let start = Instant::now();
        let later = start + Duration::from_millis(10);
        let sent = HashMap::from([
            ("a".to_owned(), start),
            ("b".to_owned(), start),
            ("c".to_owned(), start),
        ]);
        let completed = HashMap::from([
            ("a".to_owned(), vec![later]),
            ("b".to_owned(), vec![later, later]),
        ]);
        let report = Report::new(&sent, &completed, &[], 0, start, Duration::from_secs(1), 1);
        assert_eq!(
            (report.completed, report.missing, report.duplicated),
            (2, 1, 1)
        );
        assert!(!report.consistent());
    }
}
