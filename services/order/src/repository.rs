//! The `orders` table.

use chrono::{DateTime, Utc};
use service_kit::{
    pagination::{self, PageToken},
    repository::{CorruptRow, RepositoryError},
};
use sqlx::{PgExecutor, QueryBuilder};
use uuid::Uuid;

use crate::domain::{NewOrder, Order, OrderStatus, Plan};

const COLUMNS: &str = "order_id, user_id, user_email, plan, amount_minor, currency, status, \
                       create_time, update_time";

#[derive(sqlx::FromRow)]
struct OrderRow {
    order_id: Uuid,
    user_id: Uuid,
    user_email: String,
    plan: String,
    amount_minor: i64,
    currency: String,
    status: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl TryFrom<OrderRow> for Order {
    type Error = CorruptRow;

    fn try_from(row: OrderRow) -> Result<Self, Self::Error> {
        let corrupt = |column, value: &str| CorruptRow {
            table: "orders",
            id: row.order_id,
            column,
            value: value.to_owned(),
        };
        let plan = Plan::from_db(&row.plan).ok_or_else(|| corrupt("plan", &row.plan))?;
        let status =
            OrderStatus::from_db(&row.status).ok_or_else(|| corrupt("status", &row.status))?;
        Ok(Self {
            order_id: row.order_id,
            user_id: row.user_id,
            user_email: row.user_email,
            plan,
            amount_minor: row.amount_minor,
            currency: row.currency,
            status,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

fn convert(rows: Vec<OrderRow>) -> Result<Vec<Order>, RepositoryError> {
    Ok(rows
        .into_iter()
        .map(Order::try_from)
        .collect::<Result<_, _>>()?)
}

/// Creates the user's sign-up order, pending payment. `None` when the user already has one
/// (the natural key), in which case nothing is written.
pub async fn insert(
    executor: impl PgExecutor<'_>,
    new_order: &NewOrder,
) -> Result<Option<Order>, RepositoryError> {
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "insert into orders (order_id, user_id, user_email, plan, amount_minor, currency, status) \
         values ($1, $2, $3, $4, $5, $6, $7) \
         on conflict (user_id) do nothing \
         returning {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new_order.user_id)
    .bind(&new_order.user_email)
    .bind(new_order.plan.as_str())
    .bind(new_order.price.amount_minor)
    .bind(&new_order.price.currency)
    .bind(OrderStatus::PendingPayment.as_str())
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Order::try_from).transpose()?)
}

/// Moves a pending order to `status`. `None` when the order is not pending (already settled, or
/// unknown).
pub async fn settle(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
    status: OrderStatus,
) -> Result<Option<Order>, RepositoryError> {
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "update orders set status = $2, update_time = now() \
         where order_id = $1 and status = $3 \
         returning {COLUMNS}"
    ))
    .bind(order_id)
    .bind(status.as_str())
    .bind(OrderStatus::PendingPayment.as_str())
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Order::try_from).transpose()?)
}

/// The order with this id, if any.
pub async fn find(
    executor: impl PgExecutor<'_>,
    order_id: Uuid,
) -> Result<Option<Order>, RepositoryError> {
    let row: Option<OrderRow> =
        sqlx::query_as(&format!("select {COLUMNS} from orders where order_id = $1"))
            .bind(order_id)
            .fetch_optional(executor)
            .await?;
    Ok(row.map(Order::try_from).transpose()?)
}

/// Up to `limit` of the user's orders after `after`, oldest first.
pub async fn list_for_user(
    executor: impl PgExecutor<'_>,
    user_id: Uuid,
    after: Option<PageToken>,
    limit: i64,
) -> Result<Vec<Order>, RepositoryError> {
    let mut query = QueryBuilder::new(format!("select {COLUMNS} from orders where user_id = "));
    query.push_bind(user_id);
    pagination::push_keyset_page(&mut query, "order_id", after, limit);
    let rows: Vec<OrderRow> = query.build_query_as().fetch_all(executor).await?;
    convert(rows)
}
