//! The inbox: exactly-once effect over at-least-once delivery.

use sqlx::PgConnection;
use uuid::Uuid;

/// Records, in the caller's transaction, that `consumer` is applying `message_id`. Returns
/// `false` when it already was: the message is a duplicate and must be acknowledged and skipped.
/// A concurrent duplicate waits here on the primary key until the first one commits or rolls back.
pub async fn record(
    connection: &mut PgConnection,
    consumer: &str,
    message_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into processed_messages (consumer, message_id) values ($1, $2) \
         on conflict do nothing",
    )
    .bind(consumer)
    .bind(message_id)
    .execute(connection)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
