//! The protobuf form of the user domain: what the gRPC API shows and the `user_created` event
//! says. The edges (the gRPC API, the outbox write) convert here; the domain knows no proto.

use proto::user::v1 as pb;
use service_kit::proto_time::to_timestamp;

use crate::domain::{Plan, User};

/// Reads a request's plan; unspecified means [`Plan::Basic`]. The error describes an unknown
/// value, for a field violation.
pub fn plan_from_proto(value: i32) -> Result<Plan, String> {
    match pb::Plan::try_from(value) {
        Ok(pb::Plan::Unspecified | pb::Plan::Basic) => Ok(Plan::Basic),
        Ok(pb::Plan::Pro) => Ok(Plan::Pro),
        Ok(pb::Plan::Enterprise) => Ok(Plan::Enterprise),
        Err(_) => Err(format!("unknown plan {value}")),
    }
}

impl From<Plan> for pb::Plan {
    fn from(plan: Plan) -> Self {
        match plan {
            Plan::Basic => Self::Basic,
            Plan::Pro => Self::Pro,
            Plan::Enterprise => Self::Enterprise,
        }
    }
}

/// The `user_created` event announcing `user`.
pub fn user_created(user: &User) -> pb::UserCreated {
    pb::UserCreated {
        user_id: user.user_id.to_string(),
        email: user.email.clone(),
        name: user.name.clone(),
        plan: pb::Plan::from(user.plan).into(),
        create_time: Some(to_timestamp(user.create_time)),
    }
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        Self {
            user_id: user.user_id.to_string(),
            email: user.email,
            name: user.name,
            plan: pb::Plan::from(user.plan).into(),
            create_time: Some(to_timestamp(user.create_time)),
            correlation_id: user.correlation_id.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_means_basic() {
        assert_eq!(plan_from_proto(0), Ok(Plan::Basic));
    }

    #[test]
    fn every_plan_round_trips_through_proto() {
        for plan in Plan::ALL {
            assert_eq!(plan_from_proto(pb::Plan::from(plan).into()), Ok(plan));
        }
    }

    #[test]
    fn unknown_values_are_rejected() {
        assert!(plan_from_proto(42).is_err());
    }
}
