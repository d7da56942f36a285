//! A registered user, and how it is shown and announced.

use chrono::{DateTime, Utc};
use proto::user::v1 as pb;
use service_kit::proto_time::to_timestamp as timestamp;
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

impl User {
    /// The `user_created` event announcing this user.
    pub fn created_event(&self) -> pb::UserCreated {
        pb::UserCreated {
            user_id: self.user_id.to_string(),
            email: self.email.clone(),
            name: self.name.clone(),
            plan: self.plan.to_proto().into(),
            create_time: Some(timestamp(self.create_time)),
        }
    }
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        Self {
            user_id: user.user_id.to_string(),
            email: user.email,
            name: user.name,
            plan: user.plan.to_proto().into(),
            create_time: Some(timestamp(user.create_time)),
            correlation_id: user.correlation_id.unwrap_or_default(),
        }
    }
}
