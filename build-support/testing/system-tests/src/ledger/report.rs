//! The table a ledger run prints: one row a fault (flows, unknown outcomes, lost, duplicated,
//! unexpected dead letters, time to converge), and what a failed row found.

use std::{fmt::Write, time::Duration};

use crate::ledger::{
    book::{DeadLetters, Verdict},
    config::Config,
    stack::Stack,
};

/// One line of the table.
#[derive(Debug)]
pub struct Row {
    pub fault: String,
    /// Users accepted during the fault's load.
    pub flows: usize,
    /// Calls whose outcome was unknown, resolved by resending.
    pub unknown: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unexpected: usize,
    pub converged: Option<Duration>,
    /// What went wrong besides the books (a dirty exit, a late health).
    pub problem: Option<String>,
}

impl Row {
    pub fn failed(&self) -> bool {
        self.lost > 0
            || self.duplicated > 0
            || self.unexpected > 0
            || self.converged.is_none()
            || self.problem.is_some()
    }
}

/// The table of `rows`, headed by what ran (`title`: the test's name) and how hard.
pub fn table(title: &str, rows: &[Row], config: &Config) -> String {
    let width = rows.iter().map(|row| row.fault.len()).fold(34, usize::max);
    let mut out = format!(
        "\n{title}: {} CreateUser/s, {} s of load before each fault and {} s after, {} round(s)\n",
        config.rate,
        config.before.as_secs(),
        config.after.as_secs(),
        config.rounds
    );
    let _ = writeln!(
        out,
        "{:<width$} {:>6} {:>8} {:>5} {:>11} {:>11} {:>10}",
        "fault", "flows", "unknown", "lost", "duplicated", "unexpected", "converged"
    );
    let _ = writeln!(
        out,
        "{:<width$} {:>6} {:>8} {:>5} {:>11} {:>11} {:>10}",
        "", "", "(resent)", "", "", "dead letter", ""
    );
    for row in rows {
        let converged = row.converged.map_or_else(
            || "never".to_owned(),
            |d| format!("{:.1} s", d.as_secs_f64()),
        );
        let _ = writeln!(
            out,
            "{:<width$} {:>6} {:>8} {:>5} {:>11} {:>11} {:>10}{}",
            row.fault,
            row.flows,
            row.unknown,
            row.lost,
            row.duplicated,
            row.unexpected,
            converged,
            if row.problem.is_some() { "  !" } else { "" }
        );
    }
    let flows: usize = rows.iter().map(|row| row.flows).sum();
    let failed = rows.iter().filter(|row| row.failed()).count();
    let _ = writeln!(
        out,
        "{flows} flows, {} faults, {}",
        rows.len(),
        if failed == 0 {
            "every book balanced".to_owned()
        } else {
            format!("{failed} fault(s) did not balance")
        }
    );
    out
}

/// What a failed row found, for the failure message, with where the broker's queues, connections
/// and channels stand.
pub async fn describe(
    row: &Row,
    verdict: &Verdict,
    dead: &DeadLetters,
    stack: &impl Stack,
) -> String {
    let broker = stack.broker_state().await;
    let sample = |items: &[String]| {
        items
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n    ")
    };
    format!(
        "{}:\n  problem: {}\n  not where their card says ({}):\n    {}\n  duplicated:\n    {}\n  \
         phantom:\n    {}\n  unexpected dead letters:\n    {}\n  outbox rows: {}, +fail not \
         dead-lettered: {}, poison missing: {}\n  service logs: {}\n  the broker:\n{broker}",
        row.fault,
        row.problem.as_deref().unwrap_or("none"),
        verdict.pending.len(),
        sample(&verdict.pending),
        sample(&verdict.duplicated),
        sample(&verdict.phantom),
        sample(&dead.unexpected),
        verdict.outbox_rows,
        verdict.fail_not_dead_lettered,
        verdict.poison_missing,
        stack.logs().display(),
    )
}
