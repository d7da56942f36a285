//! `payment-service`: reads its settings, sets up telemetry, runs until SIGINT or SIGTERM.

use clap::Parser;
use payment_service::settings::{Cli, DEFAULTS};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let charging = cli.gateway.charge_settings()?;
    let latency = cli.gateway.gateway_latency;
    service_kit::binary::run(&DEFAULTS, cli.common, cli.command, |settings| async move {
        payment_service::build(&settings, charging, latency).await
    })
}
