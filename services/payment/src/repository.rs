//! The `payments` table.

use chrono::{DateTime, Utc};
use service_kit::{
    pagination::PageToken,
    repository::{CorruptRow, RepositoryError},
};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{NewPayment, Payment, PaymentStatus};

const COLUMNS: &str =
    "payment_id, order_id, user_id, amount_minor, currency, status, decline_reason, create_time";

#[derive(sqlx::FromRow)]
struct PaymentRow {
    payment_id: Uuid,
    order_id: Uuid,
    user_id: Uuid,
    amount_minor: i64,
    currency: String,
    status: String,
    decline_reason: Option<String>,
    create_time: DateTime<Utc>,
}

impl TryFrom<PaymentRow> for Payment {
    type Error = CorruptRow;

    fn try_from(row: PaymentRow) -> Result<Self, Self::Error> {
        let status = PaymentStatus::from_db(&row.status).ok_or_else(|| CorruptRow {
            table: "payments",
            id: row.payment_id,
            column: "status",
            value: row.status.clone(),
        })?;
        Ok(Self {
            payment_id: row.payment_id,
            order_id: row.order_id,
            user_id: row.user_id,
            amount_minor: row.amount_minor,
            currency: row.currency,
            status,
            decline_reason: row.decline_reason,
            create_time: row.create_time,
        })
    }
}

/// Serializes the handling of one order until the transaction ends, so two deliveries of the
/// same order (even under different message ids) never charge it twice.
///
/// The lock key folds all 128 bits of the id: the high half of a UUIDv7 is mostly its
/// timestamp, which orders created in the same millisecond share, and sharing a key would make
/// unrelated orders wait on each other (and deadlock across batches).
pub async fn lock_order(tx: &mut PgConnection, order_id: Uuid) -> Result<(), sqlx::Error> {
    let (high, low) = order_id.as_u64_pair();
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind((high ^ low) as i64)
        .execute(tx)
        .await?;
    Ok(())
}

/// Stores a payment with a new id. The caller holds [`lock_order`], so the order has none yet.
pub async fn insert(
    executor: impl PgExecutor<'_>,
    payment: &NewPayment,
) -> Result<Payment, RepositoryError> {
    let row: PaymentRow = sqlx::query_as(&format!(
        "insert into payments \
         (payment_id, order_id, user_id, amount_minor, currency, status, decline_reason) \
         values ($1, $2, $3, $4, $5, $6, $7) \
         returning {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(payment.order_id)
    .bind(payment.user_id)
    .bind(payment.amount_minor)
    .bind(&payment.currency)
    .bind(payment.status.as_str())
    .bind(&payment.decline_reason)
    .fetch_one(executor)
    .await?;
    Ok(Payment::try_from(row)?)
}

/// The payment with this id, if any.
pub async fn find(
    executor: impl PgExecutor<'_>,
    payment_id: Uuid,
) -> Result<Option<Payment>, RepositoryError> {
    let row: Option<PaymentRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from payments where payment_id = $1"
    ))
    .bind(payment_id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Payment::try_from).transpose()?)
}

/// The payment of this order, if any.
pub async fn find_by_order(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
) -> Result<Option<Payment>, RepositoryError> {
    let row: Option<PaymentRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from payments where order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Payment::try_from).transpose()?)
}

/// Which payments to list; at least one filter is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentFilter {
    pub user_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
}

/// Up to `limit` matching payments after `after`, oldest first.
pub async fn list(
    executor: impl PgExecutor<'_>,
    filter: PaymentFilter,
    after: Option<PageToken>,
    limit: i64,
) -> Result<Vec<Payment>, RepositoryError> {
    let rows: Vec<PaymentRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from payments \
         where ($1::uuid is null or user_id = $1) \
           and ($2::uuid is null or order_id = $2) \
           and ($3::timestamptz is null or (create_time, payment_id) > ($3, $4)) \
         order by create_time, payment_id \
         limit $5"
    ))
    .bind(filter.user_id)
    .bind(filter.order_id)
    .bind(after.map(|token| token.create_time))
    .bind(after.map(|token| token.id))
    .bind(limit)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(Payment::try_from)
        .collect::<Result<_, _>>()?)
}
