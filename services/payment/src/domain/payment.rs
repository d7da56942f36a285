//! A payment: its intent, its outcome and its status.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// The intent is recorded; the gateway's outcome is not (yet).
    Processing,
    Succeeded,
    Declined,
}

impl PaymentStatus {
    /// The value stored in `payments.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
        }
    }

    /// Reads a `payments.status` value.
    pub fn from_db(value: &str) -> Option<Self> {
        [Self::Processing, Self::Succeeded, Self::Declined]
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

/// The intent to charge an order, recorded before the gateway is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIntent {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
}

/// The gateway's final answer for a payment, to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Succeeded,
    Declined { reason: String },
}

impl PaymentOutcome {
    pub fn status(&self) -> PaymentStatus {
        match self {
            Self::Succeeded => PaymentStatus::Succeeded,
            Self::Declined { .. } => PaymentStatus::Declined,
        }
    }

    pub fn decline_reason(&self) -> Option<&str> {
        match self {
            Self::Succeeded => None,
            Self::Declined { reason } => Some(reason),
        }
    }
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub decline_reason: Option<String>,
    /// When the intent was recorded.
    pub create_time: DateTime<Utc>,
    /// When the outcome was recorded; `None` while processing.
    pub process_time: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_the_database_value() {
        for status in [
            PaymentStatus::Processing,
            PaymentStatus::Succeeded,
            PaymentStatus::Declined,
        ] {
            assert_eq!(PaymentStatus::from_db(status.as_str()), Some(status));
        }
    }
}
