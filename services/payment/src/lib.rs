//! The payment service: consumes `order_created`, charges the order once through the payment
//! gateway and publishes `payment_processed` through the outbox.

pub mod domain;
pub mod gateway;
pub mod grpc;
pub mod handlers;
pub mod repository;
pub mod settings;
pub mod startup;
pub mod wire;

pub use startup::build;

/// The service's own tables, applied after the messaging tables (see
/// `service_kit::database::migrate`).
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}
