//! Where an order is in its life.

/// `PendingPayment` until `payment_processed` settles it, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    PaymentDeclined,
}

impl OrderStatus {
    const ALL: [Self; 3] = [Self::PendingPayment, Self::Paid, Self::PaymentDeclined];

    /// The value stored in `orders.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Paid => "paid",
            Self::PaymentDeclined => "payment_declined",
        }
    }

    /// Reads an `orders.status` value.
    pub fn from_db(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_the_database_value() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::from_db(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::from_db("shipped"), None);
    }
}
