//! The order-service binary as a process: killed with SIGKILL or stopped with SIGTERM in the
//! middle of the flows, then started again, it applies every event exactly once.

use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use proto::user::v1::Plan;
use sqlx::PgPool;
use test_support::{Sandbox, TEST_RETRY_DELAYS, eventually, eventually_within};

use crate::helpers::user_created;

const USERS: usize = 300;

fn start(sandbox: &Sandbox) -> Child {
    Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env("DATABASE_URL", sandbox.database_url("orders"))
        .env("AMQP_URL", test_support::broker_url())
        .env("BUS_NAMESPACE", sandbox.topology.namespace().as_str())
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RETRY_DELAYS", TEST_RETRY_DELAYS)
        // One message per transaction (still 64 deliveries prefetched): each takes a commit, so
        // the flow lasts long enough to be interrupted in its middle. In batches of 32 a fast
        // machine applied all 300 between two polls of the test (CI, 2026-12-03).
        .env("CONSUMER_BATCH", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("order-service starts")
}

fn signal(process: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &process.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.unwrap_or(0)
}

/// Starts the binary, feeds it `USERS` user_created events, interrupts it with `signal_name`
/// mid-flow, starts it again, and checks that every user got exactly one order and one
/// order_created, and returns the exit status of the interrupted process.
async fn interrupted_mid_flow(signal_name: &str) -> std::process::ExitStatus {
    // Arrange
    let sandbox = Sandbox::new();
    let amqp = test_support::broker().await;
    let mut events = test_support::capture(&amqp, &sandbox.topology, "order_created").await;
    let mut first = start(&sandbox);
    let db = eventually_pool(&sandbox).await;
    let envelopes: Vec<_> = (0..USERS)
        .map(|i| user_created(&format!("user{i}@example.com"), Plan::Basic))
        .collect();
    let publisher = test_support::publisher(&amqp, &sandbox.topology, "test").await;
    assert!(
        publisher
            .publish_batch(&envelopes)
            .await
            .iter()
            .all(Result::is_ok)
    );

    // Act: interrupt it in the middle, then start it again.
    eventually(|| async { count(&db, "select count(*) from orders").await >= 30 }).await;
    signal(&first, signal_name);
    let status = tokio::task::spawn_blocking(move || first.wait())
        .await
        .expect("join")
        .expect("the process ends");
    let done_before = count(&db, "select count(*) from orders").await;
    assert!(
        done_before < USERS as i64,
        "interrupted mid-flow, after {done_before} orders"
    );
    let mut second = start(&sandbox);

    // Assert: every user has exactly one order, and every order was announced.
    eventually_within(Duration::from_secs(60), || async {
        count(&db, "select count(*) from orders").await == USERS as i64
    })
    .await;
    eventually(|| async { messaging::outbox::pending(&db).await.unwrap_or(1) == 0 }).await;
    let mut order_ids = HashSet::new();
    while order_ids.len() < USERS {
        let delivery = tokio::time::timeout(test_support::PATIENCE, events.next())
            .await
            .expect("every order is announced")
            .expect("open")
            .expect("intact");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        let event =
            <proto::order::v1::OrderCreated as prost::Message>::decode(delivery.data.as_slice())
                .expect("an OrderCreated");
        order_ids.insert(event.order_id);
    }
    assert_eq!(
        count(&db, "select count(distinct user_id) from orders").await,
        USERS as i64
    );
    assert_eq!(
        count(&db, "select count(*) from processed_messages").await,
        USERS as i64
    );
    assert_eq!(
        test_support::dead_letters(&amqp, &sandbox.topology).await,
        0
    );

    signal(&second, "-TERM");
    let _ = tokio::task::spawn_blocking(move || second.wait()).await;
    status
}

async fn eventually_pool(sandbox: &Sandbox) -> PgPool {
    test_support::eventually_some(|| async {
        let pool = PgPool::connect(&sandbox.database_url("orders"))
            .await
            .ok()?;
        sqlx::query("select 1 from orders limit 1")
            .execute(&pool)
            .await
            .ok()
            .map(|_| pool)
    })
    .await
}

#[tokio::test]
async fn kill_9_mid_flow_then_a_restart_applies_every_event_exactly_once() {
    let status = interrupted_mid_flow("-KILL").await;

    assert!(!status.success(), "SIGKILL ends the process abruptly");
}

#[tokio::test]
async fn sigterm_under_load_drains_cleanly_and_loses_nothing() {
    let status = interrupted_mid_flow("-TERM").await;

    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");
}
