//! `user-service`: reads its settings, sets up telemetry, runs until SIGINT or SIGTERM.

use clap::Parser;
use user_service::settings::{Cli, DEFAULTS};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let create_user_batch_max = cli.create_user_batch_max;
    service_kit::binary::run(&DEFAULTS, cli.common, cli.command, |settings| async move {
        user_service::build(&settings, create_user_batch_max).await
    })
}
