//! The plan an order is for: the order service's own view of a user's plan, which prices it.

/// The plan a user signed up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Basic,
    Pro,
    Enterprise,
}

impl Plan {
    /// Every plan.
    pub const ALL: [Self; 3] = [Self::Basic, Self::Pro, Self::Enterprise];

    /// The value stored in `orders.plan`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Pro => "pro",
            Self::Enterprise => "enterprise",
        }
    }

    /// Reads an `orders.plan` value.
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
