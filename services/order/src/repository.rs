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

/// Creates the sign-up order of each user who has none yet, pending payment, in one statement,
/// and returns the orders created. A user who has one already (the natural key) gets nothing
/// written, and neither does a user's second new order in `new_orders` (the first counts). Rows
/// go in user order, so two transactions creating overlapping users' orders wait on each other
/// instead of deadlocking.
pub async fn insert_all(
    executor: impl PgExecutor<'_>,
    new_orders: &[NewOrder],
) -> Result<Vec<Order>, RepositoryError> {
    let mut new_orders: Vec<_> = new_orders.iter().collect();
    new_orders.sort_by_key(|new_order| new_order.user_id);
    new_orders.dedup_by_key(|new_order| new_order.user_id);
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "insert into orders (order_id, user_id, user_email, plan, amount_minor, currency, status) \
         select order_id, user_id, user_email, plan, amount_minor, currency, $7 \
         from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[]) \
              as new_order(order_id, user_id, user_email, plan, amount_minor, currency) \
         order by user_id \
         on conflict (user_id) do nothing \
         returning {COLUMNS}"
    ))
    .bind(
        new_orders
            .iter()
            .map(|_| Uuid::now_v7())
            .collect::<Vec<_>>(),
    )
    .bind(new_orders.iter().map(|o| o.user_id).collect::<Vec<_>>())
    .bind(
        new_orders
            .iter()
            .map(|o| o.user_email.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        new_orders
            .iter()
            .map(|o| o.plan.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        new_orders
            .iter()
            .map(|o| o.price.amount_minor)
            .collect::<Vec<_>>(),
    )
    .bind(
        new_orders
            .iter()
            .map(|o| o.price.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(OrderStatus::PendingPayment.as_str())
    .fetch_all(executor)
    .await?;
    convert(rows)
}

/// Moves each pending order of `settlements` to its status, in one statement, and returns the
/// orders settled: an order not pending (already settled, or unknown) is not among them, and an
/// order's second settlement in `settlements` is not made (the first counts). The orders are
/// locked in id order, so two transactions settling overlapping orders wait on each other
/// instead of deadlocking.
pub async fn settle_all(
    executor: impl PgExecutor<'_>,
    settlements: &[(Uuid, OrderStatus)],
) -> Result<Vec<Order>, RepositoryError> {
    let mut settlements: Vec<_> = settlements.iter().collect();
    settlements.sort_by_key(|(order_id, _)| *order_id);
    settlements.dedup_by_key(|(order_id, _)| *order_id);
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "with pending as materialized ( \
             select order_id from orders where order_id = any($1) and status = $3 \
             order by order_id \
             for update \
         ) \
         update orders set status = settlement.new_status, update_time = now() \
         from unnest($1::uuid[], $2::text[]) as settlement(id, new_status) \
         where orders.order_id = settlement.id \
           and orders.order_id in (select order_id from pending) \
           and orders.status = $3 \
         returning {COLUMNS}"
    ))
    .bind(
        settlements
            .iter()
            .map(|(order_id, _)| *order_id)
            .collect::<Vec<_>>(),
    )
    .bind(
        settlements
            .iter()
            .map(|(_, status)| status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(OrderStatus::PendingPayment.as_str())
    .fetch_all(executor)
    .await?;
    convert(rows)
}

/// The orders of `order_ids` that exist, in one statement.
pub async fn find_all(
    executor: impl PgExecutor<'_>,
    order_ids: &[Uuid],
) -> Result<Vec<Order>, RepositoryError> {
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from orders where order_id = any($1)"
    ))
    .bind(order_ids)
    .fetch_all(executor)
    .await?;
    convert(rows)
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
