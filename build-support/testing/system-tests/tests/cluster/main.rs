//! The cluster ledger: N instances of every service at once, on one database per service and a
//! RabbitMQ cluster, under the chaos ledger's steady CreateUser load and books (issue 13, items 3
//! and 5). Two instances of each service binary (six processes) start at the same moment on
//! fresh databases (they race to create them and to run the migrations), each given every node's
//! AMQP URL (it connects to one that answers, and to another when that one is lost); they consume
//! the same quorum queues as competing consumers and relay the same outboxes (`for update skip
//! locked`). The load spreads its calls over both user-service instances, and a call that fails
//! on one is resent with its request_id (to the other). One fault at a time is injected and
//! recovered: kill -9 the node that leads most of the namespace's queues (every instance must
//! say SERVING again while it is down; then it restarts and rejoins), stop the node most client
//! connections are on (likewise; then it starts again), kill -9 one instance of each service
//! while the others carry on (then they start again), and a rolling restart of every instance,
//! one at a time (SIGTERM, a clean exit, start, SERVING, next). After each, the books must
//! balance as in the chaos ledger: every accepted user exactly one order, one payment and one
//! successful charge, nothing lost, nothing done twice, no unexpected dead letter.
//!
//! It prints the ledger's table, what the node faults saw (which node, queue leaders and
//! connections per node, time until every instance served again), how long the six instances
//! took to start together, and the work each instance did (events applied, found duplicate by
//! the inbox, published); it fails unless every instance of each service took a share. The
//! three-node cluster forms once (about a minute on two cores), then the faults run in turn. By
//! default a short round (CI); `CLUSTER_LONG=1` runs three rounds at a higher rate for longer,
//! `CLUSTER_ONLY` and `CLUSTER_RATE` work as the ledger's `LEDGER_*`. It needs the service
//! binaries built beside the test (`cargo test --workspace` builds them; `test.sh` does).

// Helpers are shared between test modules of one binary; `pub` there is crate-wide anyway.
#![allow(unreachable_pub)]

mod faults;
mod stack;

use std::fmt::Write as _;

use faults::Fault;
use stack::{ClusterStack, Work};
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
    let work = stack.work().await;
    let idle: Vec<&str> = work
        .iter()
        .filter(|(instance, work)| idle(instance, work))
        .map(|(instance, _)| instance.as_str())
        .collect();
    ledger.finish(&work_table(&stack, &work));
    assert!(
        idle.is_empty(),
        "instances that took no share of the work: {}",
        idle.join(", ")
    );
}

/// Whether an instance did none of the work it competes for: a relay that published nothing, or
/// (but for the user service, which consumes nothing) consumers that applied nothing.
fn idle(instance: &str, work: &Work) -> bool {
    work.published == 0 || (!instance.starts_with("user-service") && work.applied == 0)
}

/// What the node faults saw, how long the instances took to start together, and the work each
/// did.
fn work_table(stack: &ClusterStack, work: &[(String, Work)]) -> String {
    let mut out = String::new();
    for note in &stack.notes {
        let _ = writeln!(out, "{note}");
    }
    let _ = writeln!(
        out,
        "{} instances started at once on fresh databases, all SERVING in {:.1} s",
        stack.instances.len(),
        stack.started_in.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>11} {:>10}",
        "instance", "applied", "duplicates", "published"
    );
    for (name, work) in work {
        let _ = writeln!(
            out,
            "{name:<20} {:>8} {:>11} {:>10}",
            work.applied, work.duplicates, work.published
        );
    }
    out
}
