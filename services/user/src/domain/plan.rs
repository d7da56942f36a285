//! The plan a user signs up for.

/// A subscription plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Basic,
    Pro,
    Enterprise,
}

impl Plan {
    /// Every plan.
    pub const ALL: [Self; 3] = [Self::Basic, Self::Pro, Self::Enterprise];

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
        Self::ALL.into_iter().find(|plan| plan.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_round_trips_through_the_database_value() {
        for plan in Plan::ALL {
            assert_eq!(Plan::from_db(plan.as_str()), Some(plan));
        }
        assert_eq!(Plan::from_db("gold"), None);
    }
}
