//! The chain through a broker restart and a database restart, on private servers: every flow
//! completes, exactly once, and no service is restarted.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use futures_util::StreamExt;
use test_support::{PrivateBroker, PrivatePostgres, Sandbox};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{Stack, spawn_stack_on};

/// How long the chain gets to catch up after an outage.
const RECOVERY: Duration = Duration::from_secs(120);

/// Creates `count` users, `concurrency` calls at a time, each retried as
/// [`Stack::create_user_retrying`] does, counting the created ones in `created`.
async fn create_users(stack: &Stack, count: usize, concurrency: usize, created: &AtomicUsize) {
    futures_util::stream::iter(0..count)
        .map(|i| async move {
            stack
                .create_user_retrying(&format!("user{i}@example.com"))
                .await;
            created.fetch_add(1, Ordering::SeqCst);
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
}

/// What each database holds and, on a private broker, its queues, connections and channels:
/// where the flows stand when they did not complete.
async fn where_flows_stand(stack: &Stack, broker: Option<&PrivateBroker>) -> String {
    let users_db = stack.sandbox.pool("users").await;
    let mut report = String::new();
    for (name, pool, sql) in [
        ("users", &users_db, "select count(*) from users"),
        ("user outbox", &users_db, "select count(*) from outbox"),
        ("orders", &stack.order_db, "select count(*) from orders"),
        (
            "paid orders",
            &stack.order_db,
            "select count(*) from orders where status = 'paid'",
        ),
        (
            "order outbox",
            &stack.order_db,
            "select count(*) from outbox",
        ),
        (
            "payments",
            &stack.payment_db,
            "select count(*) from payments",
        ),
        (
            "payment outbox",
            &stack.payment_db,
            "select count(*) from outbox",
        ),
    ] {
        report.push_str(&format!("{name}: {}\n", Stack::count(pool, sql).await));
    }
    if let Some(broker) = broker {
        report.push_str(&broker.state().await);
    }
    report
}

/// Waits until some, not all, of `total` users are created: the middle of the flows.
async fn midway(created: &AtomicUsize, total: usize) {
    test_support::eventually(|| async { created.load(Ordering::SeqCst) >= total / 5 }).await;
    assert!(
        created.load(Ordering::SeqCst) < total,
        "the outage must come mid-flow"
    );
}

async fn assert_exactly_once(stack: &Stack, users: i64, broker: Option<&PrivateBroker>) {
    let paid = "select count(*) from orders where status = 'paid'";
    let caught_up = tokio::time::timeout(RECOVERY, async {
        while Stack::count(&stack.order_db, paid).await != users {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if caught_up.is_err() {
        panic!(
            "the flows did not complete within {RECOVERY:?}\n{}",
            where_flows_stand(stack, broker).await
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        Stack::count(&stack.order_db, "select count(*) from orders").await,
        users
    );
    assert_eq!(
        Stack::count(
            &stack.order_db,
            "select count(distinct user_id) from orders"
        )
        .await,
        users
    );
    assert_eq!(
        Stack::count(&stack.payment_db, "select count(*) from payments").await,
        users
    );
    assert_eq!(
        Stack::count(
            &stack.payment_db,
            "select count(distinct order_id) from payments"
        )
        .await,
        users
    );
}

#[tokio::test]
async fn a_broker_restart_in_the_middle_of_500_flows_completes_every_flow_exactly_once() {
    // Arrange
    let broker = PrivateBroker::start().await;
    let stack = spawn_stack_on(Sandbox::new(), &broker.url()).await;
    const USERS: usize = 500;

    // Act: users keep coming while the broker stops and starts again.
    let created = AtomicUsize::new(0);
    let creating = create_users(&stack, USERS, 16, &created);
    let restarting = async {
        midway(&created, USERS).await;
        broker.stop_app().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.start_app().await;
    };
    tokio::join!(creating, restarting);

    // Assert
    assert_exactly_once(&stack, USERS as i64, Some(&broker)).await;
}

#[tokio::test]
async fn health_is_not_serving_while_the_database_is_down_and_serving_once_it_is_back() {
    // Arrange
    let mut postgres = PrivatePostgres::start().await;
    let stack = spawn_stack_on(
        Sandbox::on_postgres(&postgres.url()),
        &test_support::broker_url(),
    )
    .await;

    // Act and assert: down…
    postgres.stop();
    stack.wait_for_health(ServingStatus::NotServing).await;

    // …and back, and the chain works again without a restart.
    postgres.start_again().await;
    stack.wait_for_health(ServingStatus::Serving).await;
    let user = stack.create_user("ada@example.com").await;
    stack
        .wait_for_order_status(&user.user_id, proto::order::v1::OrderStatus::Paid)
        .await;
}

#[tokio::test]
async fn a_postgres_restart_in_the_middle_of_the_flows_completes_every_flow_exactly_once() {
    // Arrange: every service's database on a private cluster.
    let mut postgres = PrivatePostgres::start().await;
    let stack = spawn_stack_on(
        Sandbox::on_postgres(&postgres.url()),
        &test_support::broker_url(),
    )
    .await;
    const USERS: usize = 300;

    // Act: users keep coming while the database goes down for a second.
    let created = AtomicUsize::new(0);
    let creating = create_users(&stack, USERS, 16, &created);
    let restarting = async {
        midway(&created, USERS).await;
        postgres.restart(Duration::from_secs(1)).await;
    };
    tokio::join!(creating, restarting);

    // Assert
    assert_exactly_once(&stack, USERS as i64, None).await;
}
