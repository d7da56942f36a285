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

mod faults;
mod stack;

use std::time::Duration;

use faults::{Fault, Taps};
use stack::ChaosStack;
use system_tests::ledger::{config::Config, keeper::Ledger, stack::Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_user_is_charged_exactly_once_through_every_fault() {
    // Arrange
    let mut ledger = Ledger::new("chaos ledger", Config::from_env("LEDGER"));
    let mut stack = ChaosStack::start().await;

    // Act: each fault in turn, and the books after it.
    'rounds: for round in 0..ledger.config.rounds {
        for fault in Fault::all() {
            if !ledger.config.runs(&fault.name()) {
                continue;
            }
            if !run_fault(&mut ledger, &mut stack, fault, &Ledger::label(round)).await {
                break 'rounds;
            }
        }
    }

    // Assert
    ledger.finish("");
}

/// One fault under the load, and its row; whether the faults after it can still be measured.
/// Duplicate events are tapped while the load runs, sent twice at once as the fault, and once
/// more after the books first balanced (late duplicates).
async fn run_fault(ledger: &mut Ledger, stack: &mut ChaosStack, fault: Fault, run: &str) -> bool {
    let window = ledger.open();
    let topology = stack.topology().clone();
    let mut taps = if fault == Fault::DuplicateEvents {
        Some(Taps::start(stack.amqp().await, &topology).await)
    } else {
        None
    };
    let loaded = ledger
        .under_load(stack, run, async |stack, dead| {
            fault.inject(stack, dead, taps.as_mut()).await
        })
        .await;
    let (mut verdict, mut converged) = ledger.converge(stack).await;
    if let (Some(taps), Some(first_time)) = (&taps, converged) {
        // Late duplicates: the same events again, after their effects were applied.
        taps.send_late(stack.amqp().await, &topology).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (again, after) = ledger.converge(stack).await;
        verdict = again;
        converged = after.map(|after| first_time + after);
    }
    ledger
        .record(stack, fault.name(), window, loaded, (verdict, converged))
        .await
}
