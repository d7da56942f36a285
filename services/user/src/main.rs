//! `user-service`: reads its settings, sets up telemetry, runs until SIGINT or SIGTERM.

use clap::Parser;
use user_service::settings::{Cli, DEFAULTS};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ingress = cli.ingress;
    service_kit::binary::run(&DEFAULTS, cli.common, cli.command, |settings| async move {
        user_service::build(&settings, ingress).await
    })
}
