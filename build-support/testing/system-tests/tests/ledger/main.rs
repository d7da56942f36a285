//! The chaos ledger: the three service binaries under a steady CreateUser load (the test cards
//! mixed in), while one fault at a time is injected and recovered: kill -9 and SIGTERM of each
//! service, a broker restart and a broker kill -9, a Postgres immediate stop, every broker
//! connection cut, the broker connections blackholed for longer than the heartbeat, duplicate
//! events (twice at once, and late), poison on every queue. After each fault, once the calls
//! whose outcome was unknown are resolved by resending their request_id, the books must
//! balance: every accepted user has exactly one order, one payment and one successful charge at
//! the gateway (none for `+decline` and `+fail`), its flow ends where its card says, the
//! dead-letter queues hold only the injected poison and the `+fail` orders, and no user exists
//! that no caller was told of.
//!
//! It prints one table (fault, flows, unknown outcomes, lost, duplicated, unexpected dead
//! letters, time to converge) and fails on any loss, duplicate or unexpected dead letter.
//! By default it runs a short round (CI); `LEDGER_LONG=1` (`test.sh --chaos-long`) runs three
//! rounds at a higher rate for longer. It runs on a private Postgres cluster and a private
//! RabbitMQ node, and needs the service binaries built beside the test (`cargo test
//! --workspace` builds them; `test.sh` does).

// Helpers are shared between test modules of one binary; `pub` there is crate-wide anyway.
#![allow(unreachable_pub)]

mod book;
mod faults;
mod load;
mod stack;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use book::{Calls, DeadLetters, Outcome, Verdict};
use faults::{Fault, Taps};
use stack::ChaosStack;

/// How hard and how long.
#[derive(Debug, Clone, Copy)]
struct Config {
    /// CreateUser calls per second.
    rate: u32,
    /// Load before the fault, and after its recovery.
    before: Duration,
    after: Duration,
    /// Times the whole list of faults is run.
    rounds: usize,
    /// Longest wait for the books to balance after a fault.
    patience: Duration,
}

impl Config {
    /// Whether `fault` runs: all do, unless `LEDGER_ONLY` names some (parts of their names,
    /// comma-separated), to repeat one while looking into it.
    fn runs(&self, fault: Fault) -> bool {
        match std::env::var("LEDGER_ONLY") {
            Ok(only) if !only.trim().is_empty() => only
                .split(',')
                .any(|part| fault.name().contains(part.trim())),
            _ => true,
        }
    }
}

impl Config {
    fn from_env() -> Self {
        let long = std::env::var("LEDGER_LONG").is_ok_and(|v| v == "1");
        let short = Self {
            rate: 30,
            before: Duration::from_secs(3),
            after: Duration::from_secs(3),
            rounds: 1,
            patience: Duration::from_secs(120),
        };
        let mut config = if long {
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
        if let Some(rate) = std::env::var("LEDGER_RATE")
            .ok()
            .and_then(|r| r.parse().ok())
        {
            config.rate = rate;
        }
        config
    }
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    fault: String,
    /// Users accepted during the fault's load.
    flows: usize,
    /// Calls whose outcome was unknown, resolved by resending.
    unknown: usize,
    lost: usize,
    duplicated: usize,
    unexpected: usize,
    converged: Option<Duration>,
    /// What went wrong besides the books (a dirty exit, a late health).
    problem: Option<String>,
}

impl Row {
    fn failed(&self) -> bool {
        self.lost > 0
            || self.duplicated > 0
            || self.unexpected > 0
            || self.converged.is_none()
            || self.problem.is_some()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_user_is_charged_exactly_once_through_every_fault() {
    // Arrange
    let config = Config::from_env();
    let mut stack = ChaosStack::start().await;
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let mut dead = DeadLetters::default();
    let mut rows = Vec::new();
    let mut details = Vec::new();

    // Act and assert: each fault in turn, and the books after it.
    'rounds: for round in 0..config.rounds {
        for fault in Fault::all() {
            if !config.runs(fault) {
                continue;
            }
            let run = format!("r{round}{}", uuid::Uuid::new_v4().simple());
            let (row, verdict) =
                run_fault(&mut stack, &calls, &mut dead, fault, &run[..9], config).await;
            let failed = row.failed();
            if failed {
                details.push(describe(&row, &verdict, &dead, &stack).await);
            }
            rows.push(row);
            if failed && row_blocks_the_rest(&rows) {
                break 'rounds;
            }
        }
    }

    let table = table(&rows, config);
    // Straight to the terminal: libtest captures only print! and eprint!.
    let _ = std::io::stderr().write_all(table.as_bytes());
    assert!(
        rows.iter().all(|row| !row.failed()),
        "the books do not balance:\n{table}\n{}",
        details.join("\n")
    );
}

/// A fault whose flows never converged leaves the next ones nothing to measure.
fn row_blocks_the_rest(rows: &[Row]) -> bool {
    rows.last().is_some_and(|row| row.converged.is_none())
}

async fn run_fault(
    stack: &mut ChaosStack,
    calls: &Calls,
    dead: &mut DeadLetters,
    fault: Fault,
    run: &str,
    config: Config,
) -> (Row, Verdict) {
    let first = calls.lock().expect("not poisoned").len();
    let unexpected_before = dead.unexpected.len();
    let topology = stack.sandbox.topology.clone();
    let mut taps = if fault == Fault::DuplicateEvents {
        Some(Taps::start(stack.amqp().await, &topology).await)
    } else {
        None
    };

    let load = load::Load::start(stack.users.clone(), calls.clone(), config.rate, run.into());
    tokio::time::sleep(config.before).await;
    let problem = fault.inject(stack, dead, taps.as_mut()).await.err();
    tokio::time::sleep(config.after).await;
    load.stop().await;
    let unknown = load::resolve(&stack.users, calls).await;

    let (mut verdict, mut converged) = converge(stack, calls, dead, config.patience).await;
    if let (Some(taps), Some(first_time)) = (&taps, converged) {
        // Late duplicates: the same events again, after their effects were applied.
        taps.send_late(stack.amqp().await, &topology).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (again, after) = converge(stack, calls, dead, config.patience).await;
        verdict = again;
        converged = after.map(|after| first_time + after);
    }

    let calls = calls.lock().expect("not poisoned");
    let window = &calls[first..];
    let flows = window
        .iter()
        .filter(|call| matches!(call.outcome, Outcome::Accepted(_)))
        .count();
    let rejected: Vec<String> = window
        .iter()
        .filter_map(|call| match &call.outcome {
            Outcome::Rejected(why) => Some(format!("{}: {why}", call.email)),
            _ => None,
        })
        .collect();
    let problem = match (problem, rejected.is_empty()) {
        (problem, true) => problem,
        (problem, false) => Some(format!(
            "{}calls rejected: {}",
            problem.map(|p| format!("{p}; ")).unwrap_or_default(),
            rejected.join(", ")
        )),
    };
    let row = Row {
        fault: fault.name(),
        flows,
        unknown,
        lost: if converged.is_some() {
            0
        } else {
            verdict.pending.len()
        },
        duplicated: verdict.duplicated.len() + verdict.phantom.len(),
        unexpected: dead.unexpected.len() - unexpected_before,
        converged,
        problem,
    };
    (row, verdict)
}

/// Polls the books until they balance (accounting for the dead letters on the way), or
/// `patience` runs out; the verdict, and how long it took.
async fn converge(
    stack: &mut ChaosStack,
    calls: &Calls,
    dead: &mut DeadLetters,
    patience: Duration,
) -> (Verdict, Option<Duration>) {
    let started = tokio::time::Instant::now();
    let topology = stack.sandbox.topology.clone();
    loop {
        book::drain_dead_letters(stack.amqp().await, &topology, dead).await;
        let snapshot = calls.lock().expect("not poisoned").clone();
        let verdict = book::check(stack, &snapshot, dead).await;
        if verdict.converged() {
            return (verdict, Some(started.elapsed()));
        }
        if started.elapsed() > patience {
            return (verdict, None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a failed row found, for the failure message, with where the broker's queues, connections
/// and channels stand.
async fn describe(row: &Row, verdict: &Verdict, dead: &DeadLetters, stack: &ChaosStack) -> String {
    let broker = stack.broker.state().await;
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

fn table(rows: &[Row], config: Config) -> String {
    let mut out = format!(
        "\nchaos ledger: {} CreateUser/s, {} s of load before each fault and {} s after, {} round(s)\n",
        config.rate,
        config.before.as_secs(),
        config.after.as_secs(),
        config.rounds
    );
    out.push_str(&format!(
        "{:<34} {:>6} {:>8} {:>5} {:>11} {:>11} {:>10}\n",
        "fault", "flows", "unknown", "lost", "duplicated", "unexpected", "converged"
    ));
    out.push_str(&format!(
        "{:<34} {:>6} {:>8} {:>5} {:>11} {:>11} {:>10}\n",
        "", "", "(resent)", "", "", "dead letter", ""
    ));
    for row in rows {
        let converged = row.converged.map_or_else(
            || "never".to_owned(),
            |d| format!("{:.1} s", d.as_secs_f64()),
        );
        out.push_str(&format!(
            "{:<34} {:>6} {:>8} {:>5} {:>11} {:>11} {:>10}{}\n",
            row.fault,
            row.flows,
            row.unknown,
            row.lost,
            row.duplicated,
            row.unexpected,
            converged,
            if row.problem.is_some() { "  !" } else { "" }
        ));
    }
    let flows: usize = rows.iter().map(|row| row.flows).sum();
    let failed = rows.iter().filter(|row| row.failed()).count();
    out.push_str(&format!(
        "{flows} flows, {} faults, {}\n",
        rows.len(),
        if failed == 0 {
            "every book balanced".to_owned()
        } else {
            format!("{failed} fault(s) did not balance")
        }
    ));
    out
}
