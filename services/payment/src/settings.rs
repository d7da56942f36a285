//! The payment service's command line and environment.

use service_kit::{CommonArgs, ServiceDefaults, healthcheck::ServiceCommand};

/// Name, database and port when nothing else is configured.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "payment-service",
    database: "payments",
    grpc_port: 50053,
    metrics_port: 9093,
};

/// Every setting is a flag and an environment variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "payment-service",
    version,
    about = "Charges every new order and publishes payment_processed"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}
