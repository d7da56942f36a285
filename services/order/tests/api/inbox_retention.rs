//! Inbox retention: rows past `INBOX_RETENTION` are deleted in bounded batches, the inbox stays
//! bounded while messages keep coming, and a message that comes back after its row is gone
//! still creates one order (the natural key, one order per user).

use std::time::{Duration, SystemTime};

use messaging::{InboxRetention, inbox::retention::Swept, topology::ORDER_SERVICE_USER_CREATED};
use proto::user::v1::Plan;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use test_support::{PrivatePostgres, assert_no_more_deliveries, eventually, next_delivery};
use tokio_util::sync::CancellationToken;
use uuid::{NoContext, Timestamp, Uuid};

use crate::helpers::{spawn_app, spawn_app_with, user_created, user_id};

/// The order service's inbox key.
const CONSUMER: &str = ORDER_SERVICE_USER_CREATED.subscription().consumer;
/// A retention longer than the tests' retry chain (700 ms) and short enough to watch expire.
const TINY_RETENTION: Duration = Duration::from_secs(2);

/// `n` UUIDv7 ids minted `ago`.
fn ids_minted(n: usize, ago: Duration) -> Vec<Uuid> {
    let since = (SystemTime::now() - ago)
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch");
    (0..n)
        .map(|_| {
            Uuid::new_v7(Timestamp::from_unix(
                NoContext,
                since.as_secs(),
                since.subsec_nanos(),
            ))
        })
        .collect()
}

/// Records `ids` as processed by `consumer` `ago`.
async fn insert_inbox_rows(db: &PgPool, consumer: &str, ids: &[Uuid], ago: Duration) {
    sqlx::query(
        "insert into processed_messages (consumer, message_id, processed_at) \
         select $1, id, now() - make_interval(secs => $3) from unnest($2::uuid[]) as id",
    )
    .bind(consumer)
    .bind(ids)
    .bind(ago.as_secs_f64())
    .execute(db)
    .await
    .expect("insert inbox rows");
}

/// The ids in the inbox, sorted.
async fn inbox_ids(db: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("select message_id from processed_messages order by message_id")
        .fetch_all(db)
        .await
        .expect("read the inbox")
}

async fn inbox_holds_any(db: &PgPool, ids: &[Uuid]) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from processed_messages where message_id = any($1))",
    )
    .bind(ids)
    .fetch_one(db)
    .await
    .expect("query the inbox")
}

#[tokio::test]
async fn inbox_rows_past_the_retention_are_deleted_and_the_others_kept() {
    // Arrange: rows applied two hours ago; recent rows; a message minted two hours ago but
    // applied just now (a dead letter replayed); another consumer's old rows.
    let app = spawn_app().await;
    let two_hours = Duration::from_secs(2 * 3600);
    let old = ids_minted(5, two_hours);
    let recent = ids_minted(3, Duration::ZERO);
    let replayed = ids_minted(1, two_hours);
    let others = ids_minted(2, two_hours);
    insert_inbox_rows(&app.db, CONSUMER, &old, two_hours).await;
    insert_inbox_rows(&app.db, CONSUMER, &recent, Duration::ZERO).await;
    insert_inbox_rows(&app.db, CONSUMER, &replayed, Duration::ZERO).await;
    insert_inbox_rows(&app.db, "someone_else", &others, two_hours).await;

    // Act: one pass with a retention of an hour.
    let retention = InboxRetention::new(app.db.clone(), [CONSUMER], Duration::from_secs(3600));
    let swept = retention.sweep().await.expect("a pass");

    // Assert
    assert_eq!(swept.rows, 5);
    let mut kept: Vec<Uuid> = [recent, replayed, others].concat();
    kept.sort_unstable();
    assert_eq!(inbox_ids(&app.db).await, kept);
}

#[tokio::test]
async fn a_backlog_larger_than_a_batch_is_deleted_over_several_bounded_statements() {
    // Arrange: 250 expired rows and a recent one.
    let app = spawn_app().await;
    let day = Duration::from_secs(86_400);
    insert_inbox_rows(&app.db, CONSUMER, &ids_minted(250, 2 * day), 2 * day).await;
    let recent = ids_minted(1, Duration::ZERO);
    insert_inbox_rows(&app.db, CONSUMER, &recent, Duration::ZERO).await;
    let retention = InboxRetention::new(app.db.clone(), [CONSUMER], day).with_batch_size(100);

    // Act
    let swept = retention.sweep().await.expect("a pass");

    // Assert: three statements of at most 100 rows (100, 100, 50) deleted them all.
    assert_eq!(
        swept,
        Swept {
            rows: 250,
            statements: 3
        }
    );
    assert_eq!(inbox_ids(&app.db).await, recent);
    let again = retention.sweep().await.expect("a second pass");
    assert_eq!(again.rows, 0);
}

#[tokio::test]
async fn the_inbox_stays_bounded_while_the_consumer_keeps_applying_messages() {
    // Arrange: the service forgets what it applied after two seconds.
    let app = spawn_app_with(|settings| settings.inbox_retention = TINY_RETENTION).await;
    let (rounds, per_round): (i64, i64) = (4, 20);
    let mut earlier: Vec<Uuid> = Vec::new();

    for round in 1..=rounds {
        // Act: a round of new users, applied by the consumer.
        let envelopes: Vec<_> = (0..per_round)
            .map(|i| user_created(&format!("r{round}u{i}@example.com"), Plan::Basic))
            .collect();
        for envelope in &envelopes {
            app.publish(envelope).await;
        }
        eventually(|| async { app.order_rows().await == round * per_round }).await;

        // Assert: meanwhile, the rows of every earlier round are deleted, so the inbox holds
        // at most this round's, however many rounds have run.
        eventually(|| async { !inbox_holds_any(&app.db, &earlier).await }).await;
        let inbox = inbox_ids(&app.db).await.len();
        assert!(
            i64::try_from(inbox).is_ok_and(|rows| rows <= per_round),
            "{inbox} rows after round {round}"
        );
        earlier.extend(envelopes.iter().map(|envelope| envelope.message_id));
    }

    // Assert: once messages stop, the inbox empties, and the deletions are counted.
    eventually(|| async { inbox_ids(&app.db).await.is_empty() }).await;
    assert_eq!(app.order_rows().await, rounds * per_round);
    let metrics = test_support::http_get(app.metrics_addr, "/metrics").await;
    let deleted = test_support::metric_value(
        &metrics,
        "inbox_rows_deleted_total",
        &[("consumer", CONSUMER)],
    );
    // The counter is the process's, shared with the other tests: at least this test's rows.
    assert!(
        deleted.is_some_and(|n| n >= (rounds * per_round) as f64),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_user_created_that_comes_back_after_its_inbox_row_expired_gives_no_second_order() {
    // Arrange: a user's order, and its inbox row gone past a tiny retention.
    let app = spawn_app_with(|settings| settings.inbox_retention = TINY_RETENTION).await;
    let mut events = app.capture("order_created").await;
    let envelope = user_created("ada@example.com", Plan::Basic);
    app.publish(&envelope).await;
    app.order_of(&user_id(&envelope)).await;
    next_delivery(&mut events).await;
    let id = [envelope.message_id];
    eventually(|| async { !inbox_holds_any(&app.db, &id).await }).await;

    // Act: the same message again (a late replay of a dead letter's copy): the inbox no longer
    // knows it, so it is applied again.
    app.publish(&envelope).await;
    eventually(|| async { inbox_holds_any(&app.db, &id).await }).await;

    // Assert: the one order per user holds; no second order, no second order_created.
    assert_no_more_deliveries(&mut events, Duration::from_secs(1)).await;
    assert_eq!(app.order_rows().await, 1);
}

#[tokio::test]
async fn the_inbox_retention_outlives_a_database_outage_and_stops_with_the_service() {
    // Arrange: the retention task on a Postgres of the test's own.
    let mut postgres = PrivatePostgres::start().await;
    let options: PgConnectOptions = format!("{}/orders", postgres.url())
        .parse()
        .expect("a valid URL");
    service_kit::database::create_database_if_missing(&options)
        .await
        .expect("the database is created");
    // As the services' pool: a caller waits a second for a connection while the server is down.
    let db = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(options)
        .await
        .expect("connected");
    service_kit::database::migrate(&db, order_service::migrator())
        .await
        .expect("migrated");
    let stop = CancellationToken::new();
    let task =
        tokio::spawn(InboxRetention::new(db.clone(), [CONSUMER], TINY_RETENTION).run(stop.clone()));

    // Act: Postgres is gone for a few of the task's periods (one second each), then back.
    postgres.stop_immediately();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!task.is_finished(), "the task survives the outage");
    postgres.start_again().await;
    let old = ids_minted(3, Duration::from_secs(60));
    insert_inbox_rows(&db, CONSUMER, &old, Duration::from_secs(60)).await;

    // Assert: it deletes again without a restart, and ends once stopped.
    eventually(|| async { inbox_ids(&db).await.is_empty() }).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task ends once stopped")
        .expect("the task did not panic");
}
