//! The service kit: everything a service of this system starts with, written once.
//!
//! - [`binary`]: what every service's `main` does.
//! - [`settings`]: configuration from the environment or flags (12-factor).
//! - [`telemetry`]: tracing subscriber, text or JSON.
//! - [`shutdown`]: SIGINT and SIGTERM as one future.
//! - [`database`]: create the database if missing, connect, apply migrations.
//! - [`runtime`]: the bus, the outbox relay, health and the gRPC server, with one shutdown path.
//! - [`request_context`]: `x-request-id` and `traceparent` of a call, as the context of its events.
//! - [`grpc_limits`]: what the gRPC server refuses: too many calls, too long, too big.
//! - [`error`]: the one mapping from API errors to gRPC statuses.
//! - [`text_field`]: the check every string field of a request passes before a query sees it.
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint.

pub mod binary;
pub mod database;
pub mod error;
pub mod grpc_limits;
pub mod healthcheck;
pub mod metrics;
pub mod pagination;
pub mod proto_time;
mod queue_gauges;
mod readiness;
pub mod repository;
pub mod request_context;
pub mod runtime;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod text_field;

pub use error::ApiError;
pub use runtime::{Application, ServiceRuntime};
pub use settings::{CommonArgs, ServiceDefaults, Settings};
