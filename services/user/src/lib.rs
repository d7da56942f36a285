//! The user service: takes `CreateUser` over gRPC, stores the user in its own database (the
//! calls that arrive together in one transaction, see [`writer`]) and publishes `user_created`
//! through the transactional outbox.

pub mod backlog;
pub mod completions;
pub mod domain;
pub mod flows;
pub mod grpc;
pub mod repository;
pub mod settings;
pub mod startup;
pub mod wire;
pub mod writer;

pub use startup::build;

/// The service's own tables, applied after the messaging tables (see
/// `service_kit::database::migrate`).
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!()
}
