//! The user service: takes `CreateUser` over gRPC, stores the user in its own database and
//! publishes `user_created` through the transactional outbox.

pub mod domain;
pub mod grpc;
pub mod repository;
pub mod settings;
pub mod startup;
pub mod wire;

pub use startup::build;
