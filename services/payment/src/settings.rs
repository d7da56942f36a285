//! The payment service's command line and environment.

use std::time::Duration;

use service_kit::{CommonArgs, ServiceDefaults, healthcheck::ServiceCommand, settings::duration};

use crate::{gateway::Latency, handlers::ChargeSettings};

/// Name, database and port when nothing else is configured. Six consumer workers: each waits
/// on the gateway for its batch's charges, and six overlap those waits. With a 100 ms gateway,
/// four capped the step near 4 x 32 charges per 0.1 s, below the zero-latency peak; six
/// completed 1.2 x the flows of four, and as many as four without gateway latency
/// (build-support/docs/benchmark.md).
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "payment-service",
    database: "payments",
    grpc_port: 50053,
    metrics_port: 9093,
    consumer_workers: 6,
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
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
}

/// How the service calls the payment gateway, and how the simulator behaves.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Longest wait for the gateway's answer to one charge; past it the charge is retried
    /// later under the same idempotency key.
    #[arg(long, env = "GATEWAY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub gateway_timeout: Duration,
    /// Charges of one consumer batch in flight at once (per consumer worker).
    #[arg(long, env = "GATEWAY_CONCURRENCY", default_value_t = ChargeSettings::default().concurrency)]
    pub gateway_concurrency: usize,
    /// The simulated gateway's answer time: `100ms`, or a range like `100ms..500ms` (uniform).
    #[arg(long, env = "GATEWAY_LATENCY", default_value = "0ms", value_parser = latency)]
    pub gateway_latency: Latency,
}

impl GatewayArgs {
    /// How charges are made; the concurrency must be at least 1.
    pub fn charge_settings(&self) -> anyhow::Result<ChargeSettings> {
        anyhow::ensure!(
            self.gateway_concurrency >= 1,
            "GATEWAY_CONCURRENCY must be at least 1"
        );
        Ok(ChargeSettings {
            timeout: self.gateway_timeout,
            concurrency: self.gateway_concurrency,
        })
    }
}

fn latency(raw: &str) -> Result<Latency, String> {
    Latency::parse(raw)
        .ok_or_else(|| format!("{raw:?} is not a latency like 100ms or a range like 50ms..200ms"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn gateway_settings_have_defaults_and_are_validated() {
        let cli = Cli::parse_from(["payment-service"]);
        assert_eq!(
            cli.gateway.charge_settings().expect("valid"),
            ChargeSettings::default()
        );
        assert_eq!(cli.gateway.gateway_latency, Latency::NONE);

        let cli = Cli::parse_from([
            "payment-service",
            "--gateway-latency",
            "100ms..500ms",
            "--gateway-timeout",
            "2s",
        ]);
        assert_eq!(
            cli.gateway.gateway_latency,
            Latency::parse("100ms..500ms").expect("a range")
        );
        assert_eq!(cli.gateway.gateway_timeout, Duration::from_secs(2));

        let error = Cli::try_parse_from(["payment-service", "--gateway-latency", "slow"])
            .expect_err("an invalid latency");
        assert!(error.to_string().contains("is not a latency"), "{error}");
        let zero = Cli::parse_from(["payment-service", "--gateway-concurrency", "0"]);
        assert!(zero.gateway.charge_settings().is_err());
    }

    #[test]
    fn six_consumer_workers_overlap_the_gateway_waits_unless_configured() {
        let settings = Cli::parse_from(["payment-service"])
            .common
            .resolve(&DEFAULTS)
            .expect("defaults are valid");
        assert_eq!(settings.consumer.workers, 6);
        let settings = Cli::parse_from(["payment-service", "--consumer-workers", "1"])
            .common
            .resolve(&DEFAULTS)
            .expect("valid");
        assert_eq!(settings.consumer.workers, 1);
    }
}
