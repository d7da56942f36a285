//! `order-service`: reads its settings, sets up telemetry, runs until SIGINT or SIGTERM.

use clap::Parser;
use order_service::settings::{Cli, DEFAULTS};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let prices = cli.price_list()?;
    service_kit::binary::run(&DEFAULTS, cli.common, cli.command, |settings| async move {
        order_service::build(&settings, prices).await
    })
}
