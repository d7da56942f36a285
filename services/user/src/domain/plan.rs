//! The plan a user signs up for.

use proto::user::v1 as pb;

/// A subscription plan. Unspecified in a request means [`Plan::Basic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Basic,
    Pro,
    Enterprise,
}

impl Plan {
    /// Reads the protobuf enum value; the error describes an unknown value.
    pub fn from_proto(value: i32) -> Result<Self, String> {
        match pb::Plan::try_from(value) {
            Ok(pb::Plan::Unspecified | pb::Plan::Basic) => Ok(Self::Basic),
            Ok(pb::Plan::Pro) => Ok(Self::Pro),
            Ok(pb::Plan::Enterprise) => Ok(Self::Enterprise),
            Err(_) => Err(format!("unknown plan {value}")),
        }
    }

    pub fn to_proto(self) -> pb::Plan {
        match self {
            Self::Basic => pb::Plan::Basic,
            Self::Pro => pb::Plan::Pro,
            Self::Enterprise => pb::Plan::Enterprise,
        }
    }

    /// The value stored in the `users.plan` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Pro => "pro",
            Self::Enterprise => "enterprise",
        }
    }

    /// Reads a `users.plan` column value.
    pub fn from_db(value: &str) -> Option<Self> {
        [Self::Basic, Self::Pro, Self::Enterprise]
            .into_iter()
            .find(|plan| plan.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_means_basic() {
        assert_eq!(Plan::from_proto(0), Ok(Plan::Basic));
    }

    #[test]
    fn every_plan_round_trips_through_proto_and_db() {
        for plan in [Plan::Basic, Plan::Pro, Plan::Enterprise] {
            assert_eq!(Plan::from_proto(plan.to_proto() as i32), Ok(plan));
            assert_eq!(Plan::from_db(plan.as_str()), Some(plan));
        }
    }

    #[test]
    fn unknown_values_are_rejected() {
        assert!(Plan::from_proto(42).is_err());
    }
}
