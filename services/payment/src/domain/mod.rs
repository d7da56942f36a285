//! The payment domain.

mod payment;

pub use payment::{NewPayment, Payment, PaymentStatus};
