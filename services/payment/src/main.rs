//! `payment-service`: reads its settings, sets up telemetry, runs until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use payment_service::settings::{Cli, DEFAULTS};
use service_kit::{
    healthcheck::{self, ServiceCommand},
    shutdown, telemetry,
};

fn main() -> anyhow::Result<()> {
    messaging::limits::ensure_thread_stacks()
        .context("cannot give its threads the stack a hostile message needs")?;
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = cli.common.resolve(&DEFAULTS)?;
    if let Some(ServiceCommand::Healthcheck) = cli.command {
        return healthcheck::check(settings.grpc_addr).await;
    }
    let _telemetry = telemetry::init(&settings.rust_log, settings.log_format, DEFAULTS.name)?;
    let charging = cli.gateway.charge_settings()?;
    let application = payment_service::build(&settings, charging, cli.gateway.gateway_latency)
        .await
        .context("payment-service failed to start")?;
    application.run_until_stopped(shutdown::signal()).await
}
