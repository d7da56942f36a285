//! `user-service`: reads its settings, sets up telemetry, runs until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use service_kit::{shutdown, telemetry};
use user_service::settings::{Cli, DEFAULTS};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Cli::parse().common.resolve(&DEFAULTS)?;
    telemetry::init(&settings.rust_log, settings.log_format)?;
    let application = user_service::build(&settings)
        .await
        .context("user-service failed to start")?;
    application.run_until_stopped(shutdown::signal()).await
}
