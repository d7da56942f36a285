//! The user service's command line and environment.

use service_kit::{CommonArgs, ServiceDefaults, healthcheck::ServiceCommand};

/// Name, database and port when nothing else is configured.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "user-service",
    database: "users",
    grpc_port: 50051,
    metrics_port: 9091,
    consumer_workers: 1,
};

/// Every setting is a flag and an environment variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "user-service",
    version,
    about = "Registers users and publishes user_created"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}
