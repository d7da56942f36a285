//! The order service: consumes `user_created` to create each user's sign-up order (publishing
//! `order_created` through the outbox), and `payment_processed` to settle it.

pub mod domain;
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
