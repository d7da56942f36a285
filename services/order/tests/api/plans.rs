//! The service's statements keep using the indexes however small their tables were when a
//! connection first ran them: a prepared statement's cached generic plan, made while `orders`
//! was small, would scan the whole table at every later batch.

use order_service::{domain::OrderStatus, repository};
use secrecy::SecretString;
use sqlx::PgPool;
use test_support::Sandbox;
use uuid::Uuid;

/// Sequential scans of `orders` so far.
async fn seq_scans(pool: &PgPool) -> i64 {
    // A backend sends its statistics at the end of a transaction, at most once a second
    // unless told to: told, then read in a transaction of their own.
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .expect("statistics flushed");
    sqlx::query_scalar::<_, i64>(
        "select seq_scan from pg_stat_user_tables where relname = 'orders'",
    )
    .fetch_one(pool)
    .await
    .expect("the orders table's statistics")
}

#[tokio::test]
async fn a_settlement_first_run_on_a_small_table_still_uses_the_index_once_it_has_grown() {
    // Arrange: the service's own pool, one connection, on a fresh database.
    let sandbox = Sandbox::new();
    let url = SecretString::from(sandbox.database_url("orders"));
    let pool = service_kit::database::connect_and_migrate(&url, 1, order_service::migrator())
        .await
        .expect("the service's pool");
    let add_orders = |count: i32| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "insert into orders (order_id, user_id, user_email, plan, amount_minor, currency, status) \
                 select gen_random_uuid(), gen_random_uuid(), gen_random_uuid() || '@example.com', \
                        'basic', 999, 'USD', 'pending_payment' \
                 from generate_series(1, $1)",
            )
            .bind(count)
            .execute(&pool)
            .await
            .expect("orders");
        }
    };
    // A full batch of settlements, as under load: more ids than a generic plan assumes.
    let batch: Vec<_> = (0..32)
        .map(|_| (Uuid::now_v7(), OrderStatus::Paid))
        .collect();
    add_orders(50).await;
    // More runs than Postgres plans for their parameters before it may keep a generic plan.
    for _ in 0..10 {
        repository::settle_all(&pool, &batch)
            .await
            .expect("a settlement");
    }
    add_orders(20_000).await;
    let before = seq_scans(&pool).await;

    // Act: the same statement on the same connection, now on a big table.
    for _ in 0..10 {
        repository::settle_all(&pool, &batch)
            .await
            .expect("a settlement");
    }

    // Assert
    assert_eq!(
        seq_scans(&pool).await,
        before,
        "the settlement scanned the whole orders table"
    );
    pool.close().await;
}
