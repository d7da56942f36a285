//! The `payments` table: a payment's intent is recorded before its charge, its outcome after.

use chrono::{DateTime, Utc};
use service_kit::{
    pagination::{self, PageToken},
    repository::{CorruptRow, RepositoryError},
};
use sqlx::{PgConnection, PgExecutor, PgPool, QueryBuilder};
use uuid::Uuid;

use crate::domain::{Payment, PaymentIntent, PaymentOutcome, PaymentStatus};

const COLUMNS: &str = "payment_id, order_id, user_id, amount_minor, currency, status, \
                       decline_reason, create_time, process_time";

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
    process_time: Option<DateTime<Utc>>,
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
            process_time: row.process_time,
        })
    }
}

/// Records the intent to charge each order that has no payment yet (status `processing`), in
/// one statement that commits on its own, and returns the payment of every order asked about:
/// the new intents and the payments recorded before (processing or with their outcome).
pub async fn record_intents(
    pool: &PgPool,
    intents: &[PaymentIntent],
) -> Result<Vec<Payment>, RepositoryError> {
    let mut intents: Vec<_> = intents.iter().collect();
    // Keys in one order, so two batches inserting overlapping orders wait instead of
    // deadlocking.
    intents.sort_by_key(|intent| intent.order_id);
    intents.dedup_by_key(|intent| intent.order_id);
    let order_ids: Vec<Uuid> = intents.iter().map(|intent| intent.order_id).collect();
    let inserted: Vec<PaymentRow> = sqlx::query_as(&format!(
        "insert into payments (payment_id, order_id, user_id, amount_minor, currency, status) \
         select payment_id, order_id, user_id, amount_minor, currency, 'processing' \
         from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[]) \
              as intent(payment_id, order_id, user_id, amount_minor, currency) \
         order by order_id \
         on conflict (order_id) do nothing \
         returning {COLUMNS}"
    ))
    .bind(intents.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
    .bind(&order_ids)
    .bind(intents.iter().map(|i| i.user_id).collect::<Vec<_>>())
    .bind(intents.iter().map(|i| i.amount_minor).collect::<Vec<_>>())
    .bind(
        intents
            .iter()
            .map(|i| i.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .fetch_all(pool)
    .await?;
    let mut payments = inserted
        .into_iter()
        .map(Payment::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    if payments.len() < order_ids.len() {
        // Some orders had a payment already. A fresh statement sees it even if it was
        // committed while the insert above ran.
        let recorded: Vec<PaymentRow> = sqlx::query_as(&format!(
            "select {COLUMNS} from payments where order_id = any($1) and not payment_id = any($2)"
        ))
        .bind(&order_ids)
        .bind(payments.iter().map(|p| p.payment_id).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
        for row in recorded {
            payments.push(Payment::try_from(row)?);
        }
    }
    Ok(payments)
}

/// Records the gateway's outcome of each order's payment that is still processing, in one
/// statement, and returns the payments recorded: an order whose outcome was recorded already (by
/// another delivery of the same order) is not among them, and an order's second outcome in
/// `outcomes` is not recorded (the first counts). The payments are locked in order id order, so
/// two transactions recording overlapping orders wait on each other instead of deadlocking.
pub async fn record_outcomes(
    tx: &mut PgConnection,
    outcomes: &[(Uuid, &PaymentOutcome)],
) -> Result<Vec<Payment>, RepositoryError> {
    let mut outcomes: Vec<_> = outcomes.iter().collect();
    outcomes.sort_by_key(|(order_id, _)| *order_id);
    outcomes.dedup_by_key(|(order_id, _)| *order_id);
    let rows: Vec<PaymentRow> = sqlx::query_as(&format!(
        "with processing as materialized ( \
             select order_id from payments where order_id = any($1) and status = 'processing' \
             order by order_id \
             for update \
         ) \
         update payments \
         set status = outcome.new_status, decline_reason = outcome.reason, process_time = now() \
         from unnest($1::uuid[], $2::text[], $3::text[]) as outcome(id, new_status, reason) \
         where payments.order_id = outcome.id \
           and payments.order_id in (select order_id from processing) \
           and payments.status = 'processing' \
         returning {COLUMNS}"
    ))
    .bind(
        outcomes
            .iter()
            .map(|(order_id, _)| *order_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|(_, outcome)| outcome.status().as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|(_, outcome)| outcome.decline_reason())
            .collect::<Vec<_>>(),
    )
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(Payment::try_from)
        .collect::<Result<_, _>>()?)
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
    let mut query = QueryBuilder::new(format!("select {COLUMNS} from payments where true"));
    if let Some(user_id) = filter.user_id {
        query.push(" and user_id = ").push_bind(user_id);
    }
    if let Some(order_id) = filter.order_id {
        query.push(" and order_id = ").push_bind(order_id);
    }
    pagination::push_keyset_page(&mut query, "payment_id", after, limit);
    let rows: Vec<PaymentRow> = query.build_query_as().fetch_all(executor).await?;
    Ok(rows
        .into_iter()
        .map(Payment::try_from)
        .collect::<Result<_, _>>()?)
}
