//! How hard and how long a ledger run goes: a short round by default (CI), longer and harder
//! when asked, through environment variables named after the test (`LEDGER_*`, `CLUSTER_*`).

use std::time::Duration;

/// How hard and how long.
#[derive(Debug, Clone)]
pub struct Config {
    /// CreateUser calls per second.
    pub rate: u32,
    /// Load before the fault, and after its recovery.
    pub before: Duration,
    pub after: Duration,
    /// Times the whole list of faults is run.
    pub rounds: usize,
    /// Longest wait for the books to balance after a fault.
    pub patience: Duration,
    /// Parts of the names of the faults to run (all when empty).
    only: Vec<String>,
}

impl Config {
    /// The short round (30 calls/s, 3 s of load before and after each fault, one round), or with
    /// `<PREFIX>_LONG=1` three rounds at 80 calls/s with 20 s before and after;
    /// `<PREFIX>_RATE` sets the rate, `<PREFIX>_ONLY` names the faults to run (parts of their
    /// names, comma-separated), to repeat one while looking into it.
    pub fn from_env(prefix: &str) -> Self {
        let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
        let short = Self {
            rate: 30,
            before: Duration::from_secs(3),
            after: Duration::from_secs(3),
            rounds: 1,
            patience: Duration::from_secs(120),
            only: Vec::new(),
        };
        let mut config = if var("LONG").is_some_and(|v| v == "1") {
            Self {
                rate: 80,
                before: Duration::from_secs(20),
                after: Duration::from_secs(20),
                rounds: 3,
                ..short
            }
        } else {
            short
        };
        if let Some(rate) = var("RATE").and_then(|r| r.parse().ok()) {
            config.rate = rate;
        }
        config.only = var("ONLY")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(str::to_owned)
            .collect();
        config
    }

    /// Whether the fault named `name` runs.
    pub fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|part| name.contains(part.as_str()))
    }
}
