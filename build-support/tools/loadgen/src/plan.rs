//! What a run is asked to do (its pace, its extent) and what it observed: shared by the run
//! itself, its progress bar and its report.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How calls are started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pace {
    /// This many callers, each sending its next call as soon as its last returned, and waiting
    /// first as long as a refusal's `RetryInfo` asked.
    Closed { concurrency: usize },
    /// Call `i` starts at `i / rate` seconds into the run, whatever the calls before it are
    /// doing: the offered load does not bend to the stack's answers.
    Open { rate: f64 },
}

impl Pace {
    /// An open-loop pace; the rate must be a positive number.
    pub(crate) fn open(rate: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of calls per second, not {rate}"
        );
        Ok(Self::Open { rate })
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Extent {
    /// This many calls.
    Users(u64),
    /// Calls for this many seconds.
    Seconds(u64),
}

/// What a run does.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) pace: Pace,
    pub(crate) extent: Extent,
    /// Put before the progress bar, to say which run it is.
    pub(crate) label: String,
}

/// What the run observed, per user.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    /// user_id → when its CreateUser was sent.
    pub(crate) sent: HashMap<String, Instant>,
    /// user_id → when each of its payment_processed arrived.
    pub(crate) completed: HashMap<String, Vec<Instant>>,
    pub(crate) rpc_latencies: Vec<Duration>,
    /// Calls answered `RESOURCE_EXHAUSTED`: the service was saturated and created no user.
    pub(crate) rejected: u64,
    /// Calls that ended with any other error.
    pub(crate) failed: u64,
    /// The first of those errors, to say what went wrong.
    pub(crate) first_failure: Option<String>,
    /// Calls sent and not yet answered.
    pub(crate) in_flight: usize,
    /// The most calls that were in flight at once.
    pub(crate) in_flight_max: usize,
}
