//! The numbers a run reports.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::plan::{Observations, Pace};

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
    /// The callers of a closed-loop run.
    pub(crate) concurrency: Option<usize>,
    /// Calls started per second, when the run was open loop.
    pub(crate) rate: Option<f64>,
    /// The most calls in flight at once.
    pub(crate) in_flight_max: usize,
    pub(crate) accepted: usize,
    /// Calls the service rejected as saturated (`RESOURCE_EXHAUSTED`); they created no user.
    pub(crate) rejected: u64,
    /// Calls that ended with another error.
    pub(crate) failed: u64,
    pub(crate) first_failure: Option<String>,
    pub(crate) completed: usize,
    pub(crate) missing: usize,
    pub(crate) duplicated: usize,
    pub(crate) accepted_per_second: f64,
    pub(crate) completed_per_second: f64,
    pub(crate) rpc: Percentiles,
    pub(crate) end_to_end: Percentiles,
}

impl Report {
    /// The report of what a run observed. Only accepted calls count in the consistency
    /// check: a rejected or failed call created no user, so no flow is owed for it.
    pub(crate) fn new(
        observations: &Observations,
        started: Instant,
        created_in: Duration,
        pace: Pace,
    ) -> Self {
        let (sent, completed) = (&observations.sent, &observations.completed);
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
        let (concurrency, rate) = match pace {
            Pace::Closed { concurrency } => (Some(concurrency), None),
            Pace::Open { rate } => (None, Some(rate)),
        };
        Self {
            concurrency,
            rate,
            in_flight_max: observations.in_flight_max,
            accepted: sent.len(),
            rejected: observations.rejected,
            failed: observations.failed,
            first_failure: observations.first_failure.clone(),
            completed: completed_count,
            missing,
            duplicated,
            accepted_per_second: sent.len() as f64 / created_in.as_secs_f64().max(f64::EPSILON),
            completed_per_second: completed_count as f64 / flows_window.max(f64::EPSILON),
            rpc: Percentiles::of(observations.rpc_latencies.clone()),
            end_to_end: Percentiles::of(end_to_end),
        }
    }

    /// Every accepted user got exactly one payment_processed.
    pub(crate) fn consistent(&self) -> bool {
        self.missing == 0 && self.duplicated == 0
    }

    /// Every call made: accepted, rejected or failed.
    pub(crate) fn calls(&self) -> u64 {
        self.accepted as u64 + self.rejected + self.failed
    }

    /// The share of calls the service rejected as saturated, 0 to 1.
    pub(crate) fn rejected_share(&self) -> f64 {
        match self.calls() {
            0 => 0.0,
            calls => self.rejected as f64 / calls as f64,
        }
    }

    pub(crate) fn table(&self) -> String {
        let row = |name: &str, p: &Percentiles| {
            format!(
                "{name:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
                p.p50, p.p90, p.p99, p.max
            )
        };
        format!(
            "{}\n\
             accepted calls         {}, {:.1}/s\n\
             rejected calls         {} ({:.1}% of {} calls: RESOURCE_EXHAUSTED, no user created)\n\
             failed calls           {}{}\n\
             completed flows        {}, {:.1}/s\n\
             consistency            {} missing, {} duplicated: {}\n\
             latency (ms)                 p50       p90       p99       max\n\
             {}{}",
            match (self.concurrency, self.rate) {
                (Some(concurrency), _) => format!("concurrency            {concurrency}"),
                (None, rate) => format!(
                    "open loop              calls started at {}/s, at most {} in flight",
                    rate.unwrap_or_default(),
                    self.in_flight_max
                ),
            },
            self.accepted,
            self.accepted_per_second,
            self.rejected,
            100.0 * self.rejected_share(),
            self.calls(),
            self.failed,
            self.first_failure
                .as_ref()
                .map(|failure| format!(" (first: {failure})"))
                .unwrap_or_default(),
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
            "in_flight_max": self.in_flight_max,
            "accepted": self.accepted,
            "calls": self.calls(),
            "rejected": self.rejected,
            "rejected_share": self.rejected_share(),
            "failed": self.failed,
            "first_failure": self.first_failure,
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn closed(concurrency: usize) -> Pace {
        Pace::Closed { concurrency }
    }

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
        let observations = Observations {
            sent: HashMap::from([
                ("a".to_owned(), start),
                ("b".to_owned(), start),
                ("c".to_owned(), start),
            ]),
            completed: HashMap::from([
                ("a".to_owned(), vec![later]),
                ("b".to_owned(), vec![later, later]),
            ]),
            ..Observations::default()
        };

        let report = Report::new(&observations, start, Duration::from_secs(1), closed(1));

        assert_eq!(
            (report.completed, report.missing, report.duplicated),
            (2, 1, 1)
        );
        assert!(!report.consistent());
    }

    #[test]
    fn rejected_calls_are_counted_apart_and_owe_no_flow() {
        let start = Instant::now();
        let later = start + Duration::from_millis(10);
        let observations = Observations {
            sent: HashMap::from([("a".to_owned(), start), ("b".to_owned(), start)]),
            completed: HashMap::from([
                ("a".to_owned(), vec![later]),
                ("b".to_owned(), vec![later]),
            ]),
            rpc_latencies: vec![Duration::from_millis(2); 2],
            rejected: 6,
            failed: 2,
            first_failure: Some("Unavailable: connection refused".to_owned()),
            ..Observations::default()
        };

        let report = Report::new(&observations, start, Duration::from_secs(1), closed(64));

        assert!(report.consistent(), "{report:?}");
        assert_eq!((report.calls(), report.rejected, report.failed), (10, 6, 2));
        assert_eq!(report.rejected_share(), 0.6);
        let json = report.to_json();
        assert_eq!(json["rejected"], 6);
        assert_eq!(json["rejected_share"], 0.6);
        assert_eq!(json["failed"], 2);
        assert_eq!(json["first_failure"], "Unavailable: connection refused");
        let table = report.table();
        assert!(
            table.contains("rejected calls         6 (60.0% of 10 calls"),
            "{table}"
        );
        assert!(
            table.contains("failed calls           2 (first: Unavailable: connection refused)"),
            "{table}"
        );
    }

    #[test]
    fn a_run_without_calls_has_no_rejected_share() {
        let report = Report::new(
            &Observations::default(),
            Instant::now(),
            Duration::from_secs(1),
            closed(1),
        );

        assert_eq!((report.calls(), report.rejected_share()), (0, 0.0));
        assert!(report.consistent());
    }
}
