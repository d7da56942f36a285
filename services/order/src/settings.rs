//! The order service's command line and environment.

use service_kit::{CommonArgs, ServiceDefaults, healthcheck::ServiceCommand};

use crate::domain::{PriceList, price_list::DEFAULT_PRICES};

/// Name, database and port when nothing else is configured.
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "order-service",
    database: "orders",
    grpc_port: 50052,
    metrics_port: 9092,
    consumer_workers: 1,
};

/// Every setting is a flag and an environment variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "order-service",
    version,
    about = "Creates the sign-up order of every new user and follows its payment"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Option<ServiceCommand>,
    /// Price of each plan, in PRICE_CURRENCY.
    #[arg(long, env = "PLAN_PRICES", default_value = DEFAULT_PRICES)]
    pub plan_prices: String,
    /// ISO-4217 currency of PLAN_PRICES.
    #[arg(long, env = "PRICE_CURRENCY", default_value = "USD")]
    pub price_currency: String,
}

impl Cli {
    /// The configured price list, or why it is invalid.
    pub fn price_list(&self) -> anyhow::Result<PriceList> {
        PriceList::parse(&self.plan_prices, &self.price_currency)
            .map_err(|reason| anyhow::anyhow!("invalid PLAN_PRICES/PRICE_CURRENCY: {reason}"))
    }
}
