//! The keeper of a ledger run: runs each fault under the load, resolves the calls whose outcome
//! was unknown, waits for the books to balance, and keeps a row a fault; at the end it prints
//! the table and fails the test on any loss, duplicate or unexpected dead letter.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::ledger::{
    book::{self, Calls, DeadLetters, Outcome, Verdict},
    config::Config,
    load::{self, Load},
    report::{self, Row},
    stack::Stack,
};

/// The books of one run: every call, the dead letters seen, a row a fault.
#[derive(Debug)]
pub struct Ledger {
    title: &'static str,
    pub config: Config,
    pub calls: Calls,
    pub dead: DeadLetters,
    rows: Vec<Row>,
    details: Vec<String>,
}

/// Where the books stood when a fault's load began.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    first: usize,
    unexpected_before: usize,
}

/// What a fault under the load came to before the books are checked.
#[derive(Debug)]
pub struct Loaded {
    /// Calls whose outcome was unknown, resolved by resending.
    pub unknown: usize,
    /// What the fault says did not behave.
    pub problem: Option<String>,
}

impl Ledger {
    /// Empty books for the run `title` (the table's heading) with `config`.
    pub fn new(title: &'static str, config: Config) -> Self {
        Self {
            title,
            config,
            calls: Arc::new(Mutex::new(Vec::new())),
            dead: DeadLetters::default(),
            rows: Vec::new(),
            details: Vec::new(),
        }
    }

    /// A label unique to one fault of round `round`, for its users' e-mails.
    pub fn label(round: usize) -> String {
        let run = format!("r{round}{}", uuid::Uuid::new_v4().simple());
        run[..9].to_owned()
    }

    /// Marks where the books stand before a fault's load.
    pub fn open(&self) -> Window {
        Window {
            first: self.calls.lock().expect("not poisoned").len(),
            unexpected_before: self.dead.unexpected.len(),
        }
    }

    /// Runs `fault` (injection and recovery) under the load, with load before and after it;
    /// then resolves the calls whose outcome was unknown.
    pub async fn under_load<S: Stack>(
        &mut self,
        stack: &mut S,
        run: &str,
        fault: impl AsyncFnOnce(&mut S, &mut DeadLetters) -> Result<(), String>,
    ) -> Loaded {
        let users = stack.users();
        let load = Load::start(
            users.clone(),
            self.calls.clone(),
            self.config.rate,
            run.into(),
        );
        tokio::time::sleep(self.config.before).await;
        let problem = fault(stack, &mut self.dead).await.err();
        tokio::time::sleep(self.config.after).await;
        load.stop().await;
        let unknown = load::resolve(&users, &self.calls).await;
        Loaded { unknown, problem }
    }

    /// Polls the books until they balance (accounting for the dead letters on the way), or
    /// the patience runs out; the verdict, and how long it took.
    pub async fn converge(&mut self, stack: &mut impl Stack) -> (Verdict, Option<Duration>) {
        let started = tokio::time::Instant::now();
        let topology = stack.topology().clone();
        loop {
            book::drain_dead_letters(stack.amqp().await, &topology, &mut self.dead).await;
            let snapshot = self.calls.lock().expect("not poisoned").clone();
            let verdict = book::check(stack.databases(), &snapshot, &self.dead).await;
            if verdict.converged() {
                return (verdict, Some(started.elapsed()));
            }
            if started.elapsed() > self.config.patience {
                return (verdict, None);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Keeps the row of the fault `name` whose load began at `window`; a failed row's details
    /// go into the failure message. Whether the faults after it can still be measured (not when
    /// its flows never converged).
    pub async fn record(
        &mut self,
        stack: &impl Stack,
        name: String,
        window: Window,
        loaded: Loaded,
        (verdict, converged): (Verdict, Option<Duration>),
    ) -> bool {
        let row = {
            let calls = self.calls.lock().expect("not poisoned");
            let calls = &calls[window.first..];
            let flows = calls
                .iter()
                .filter(|call| matches!(call.outcome, Outcome::Accepted(_)))
                .count();
            let rejected: Vec<String> = calls
                .iter()
                .filter_map(|call| match &call.outcome {
                    Outcome::Rejected(why) => Some(format!("{}: {why}", call.email)),
                    _ => None,
                })
                .collect();
            let problem = match (loaded.problem, rejected.is_empty()) {
                (problem, true) => problem,
                (problem, false) => Some(format!(
                    "{}calls rejected: {}",
                    problem.map(|p| format!("{p}; ")).unwrap_or_default(),
                    rejected.join(", ")
                )),
            };
            Row {
                fault: name,
                flows,
                unknown: loaded.unknown,
                lost: if converged.is_some() {
                    0
                } else {
                    verdict.pending.len()
                },
                duplicated: verdict.duplicated.len() + verdict.phantom.len(),
                unexpected: self.dead.unexpected.len() - window.unexpected_before,
                converged,
                problem,
            }
        };
        if row.failed() {
            let details = report::describe(&row, &verdict, &self.dead, stack).await;
            self.details.push(details);
        }
        let go_on = row.converged.is_some();
        self.rows.push(row);
        go_on
    }

    /// One fault from start to row: [`Ledger::under_load`], [`Ledger::converge`],
    /// [`Ledger::record`]. Whether the faults after it can still be measured.
    pub async fn run<S: Stack>(
        &mut self,
        stack: &mut S,
        name: String,
        run: &str,
        fault: impl AsyncFnOnce(&mut S, &mut DeadLetters) -> Result<(), String>,
    ) -> bool {
        let window = self.open();
        let loaded = self.under_load(stack, run, fault).await;
        let books = self.converge(stack).await;
        self.record(stack, name, window, loaded, books).await
    }

    /// Prints the table, with `notes` under it, and fails the test unless every row balanced.
    pub fn finish(self, notes: &str) {
        let table = report::table(self.title, &self.rows, &self.config) + notes;
        // Straight to the terminal: libtest captures only print! and eprint!.
        let _ = std::io::stderr().write_all(table.as_bytes());
        assert!(
            self.rows.iter().all(|row| !row.failed()),
            "the books do not balance:\n{table}\n{}",
            self.details.join("\n")
        );
    }
}
