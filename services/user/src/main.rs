//! `user-service`: reads its settings, sets up telemetry, runs until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use service_kit::{
    healthcheck::{self, ServiceCommand},
    shutdown, telemetry,
};
use user_service::settings::{Cli, DEFAULTS};

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
    let application = user_service::build(&settings)
        .await
        .context("user-service failed to start")?;
    application.run_until_stopped(shutdown::signal()).await
}
