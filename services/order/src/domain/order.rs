//! An order.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{OrderStatus, Plan, Price};

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
