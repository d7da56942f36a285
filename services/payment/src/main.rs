//! `payment-service`: reads its settings, sets up telemetry, runs until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use payment_service::settings::{Cli, DEFAULTS};
use service_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Cli::parse().common.resolve(&DEFAULTS)?;
    telemetry::init(&settings.rust_log, settings.log_format)?;
    let application = payment_service::build(&settings)
        .await
        .context("payment-service failed to start")?;
    application.run_until_stopped(shutdown::signal()).await
}
