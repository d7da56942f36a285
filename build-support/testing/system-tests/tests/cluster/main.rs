//! The cluster ledger: N instances of every service at once, on one database per service and one
//! RabbitMQ, under the chaos ledger's steady CreateUser load and books (issue 13, items 3 and 5).
//! Two instances of each service binary (six processes) start at the same moment on fresh
//! databases (they race to create them and to run the migrations), consume the same queues as
//! competing consumers and relay the same outboxes (`for update skip locked`); the load spreads
//! its calls over both user-service instances, and a call that fails on one is resent with its
//! request_id (to the other). One fault at a time is injected and recovered: kill -9 one
//! instance of each service while the others carry on, and a rolling restart of every instance,
//! one at a time (SIGTERM, exit, start, SERVING, next). After each, the books must balance as in
//! the chaos ledger: every accepted user exactly one order, one payment and one successful
//! charge, nothing lost, nothing done twice, no unexpected dead letter.
//!
//! It prints the ledger's table, then the work each instance did (events applied, found
//! duplicate by the inbox, published), which shows both instances of each service took a share.
//! By default a short round (CI); `CLUSTER_LONG=1` runs three rounds at a higher rate for longer,
//! `CLUSTER_ONLY` and `CLUSTER_RATE` as the ledger's `LEDGER_*`. It needs the service binaries
//! built beside the test (`cargo test --workspace` builds them; `test.sh` does).

// Helpers are shared between test modules of one binary; `pub` there is crate-wide anyway.
#![allow(unreachable_pub)]

mod faults;
mod stack;

use std::fmt::Write as _;

use faults::Fault;
use stack::ClusterStack;
use system_tests::ledger::{config::Config, keeper::Ledger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_each_service_charge_every_accepted_user_exactly_once_through_every_fault()
{
    // Arrange: six instances started at once on fresh databases.
    let mut ledger = Ledger::new("cluster ledger", Config::from_env("CLUSTER"));
    let mut stack = ClusterStack::start().await;

    // Act: each fault in turn, and the books after it.
    'rounds: for round in 0..ledger.config.rounds {
        for fault in Fault::ALL {
            let name = fault.name();
            if !ledger.config.runs(&name) {
                continue;
            }
            let run = Ledger::label(round);
            let go_on = ledger
                .run(&mut stack, name, &run, async |stack, _| {
                    fault.inject(stack).await
                })
                .await;
            if !go_on {
                break 'rounds;
            }
        }
    }

    // Assert
    ledger.finish(&work_table(&stack).await);
}

/// How long the instances took to start together, and the work each did.
async fn work_table(stack: &ClusterStack) -> String {
    let mut out = format!(
        "\n{} instances started at once on fresh databases, all SERVING in {:.1} s\n",
        stack.instances.len(),
        stack.started_in.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>11} {:>10}",
        "instance", "applied", "duplicates", "published"
    );
    for (name, work) in stack.work().await {
        let _ = writeln!(
            out,
            "{name:<20} {:>8} {:>11} {:>10}",
            work.applied, work.duplicates, work.published
        );
    }
    out
}
