//! An order, and how it is shown and announced.

use chrono::{DateTime, Utc};
use proto::{order::v1 as pb, user::v1::Plan};
use service_kit::proto_time::to_timestamp;
use uuid::Uuid;

use super::{OrderStatus, Price};

/// The order to create for a new user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub user_id: Uuid,
    pub user_email: String,
    pub plan: Plan,
    pub price: Price,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub user_email: String,
    pub plan: Plan,
    pub amount_minor: i64,
    pub currency: String,
    pub status: OrderStatus,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Order {
    /// The `order_created` event announcing this order.
    pub fn created_event(&self) -> pb::OrderCreated {
        pb::OrderCreated {
            order_id: self.order_id.to_string(),
            user_id: self.user_id.to_string(),
            user_email: self.user_email.clone(),
            plan: self.plan.into(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            create_time: Some(to_timestamp(self.create_time)),
        }
    }
}

impl From<Order> for pb::Order {
    fn from(order: Order) -> Self {
        Self {
            order_id: order.order_id.to_string(),
            user_id: order.user_id.to_string(),
            plan: order.plan.into(),
            amount_minor: order.amount_minor,
            currency: order.currency,
            status: order.status.to_proto().into(),
            create_time: Some(to_timestamp(order.create_time)),
            update_time: Some(to_timestamp(order.update_time)),
        }
    }
}

/// The value stored in `orders.plan`.
pub(crate) fn plan_to_db(plan: Plan) -> &'static str {
    match plan {
        Plan::Unspecified | Plan::Basic => "basic",
        Plan::Pro => "pro",
        Plan::Enterprise => "enterprise",
    }
}

/// Reads an `orders.plan` value.
pub(crate) fn plan_from_db(value: &str) -> Option<Plan> {
    [Plan::Basic, Plan::Pro, Plan::Enterprise]
        .into_iter()
        .find(|plan| plan_to_db(*plan) == value)
}
