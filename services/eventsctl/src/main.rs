//! `eventsctl`: the operator CLI. Parses the command line, runs it, and turns errors into a
//! message and a non-zero exit code.

use std::process::ExitCode;

use clap::Parser;
use eventsctl::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match eventsctl::run(cli, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eventsctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
