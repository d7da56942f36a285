//! The inbox: exactly-once effect over at-least-once delivery. Its rows are kept as long as a
//! redelivery can need them, then deleted ([`retention`]).

pub mod retention;

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

/// Records, in the caller's transaction and in one statement, that `consumer` is applying each
/// of `message_ids`. Returns the ids that were new; the others are duplicates. Rows go in sorted
/// order, so two transactions recording overlapping batches wait on each other instead of
/// deadlocking.
pub async fn record_all(
    connection: &mut PgConnection,
    consumer: &str,
    message_ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut sorted = message_ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "insert into processed_messages (consumer, message_id) \
         select $1, id from unnest($2::uuid[]) with ordinality as ids(id, n) order by n \
         on conflict do nothing \
         returning message_id",
    )
    .bind(consumer)
    .bind(&sorted)
    .fetch_all(connection)
    .await?;
    Ok(fresh.into_iter().collect())
}
