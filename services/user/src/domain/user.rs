//! A registered user.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Plan;

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub plan: Plan,
    pub create_time: DateTime<Utc>,
    /// The x-request-id of the CreateUser call, when it was recorded.
    pub correlation_id: Option<String>,
}
