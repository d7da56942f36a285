//! The events the order service consumes.

mod payment_processed;
mod user_created;

pub use payment_processed::PaymentProcessedHandler;
pub use user_created::UserCreatedHandler;
