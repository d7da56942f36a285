//! The payment domain.

mod payment;

pub use payment::{Payment, PaymentIntent, PaymentOutcome, PaymentStatus};
