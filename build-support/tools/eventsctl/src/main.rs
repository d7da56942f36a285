//! `eventsctl`: the operator CLI. Parses the command line, runs it, and turns errors into a
//! message and a non-zero exit code.

use std::process::ExitCode;

use clap::Parser;
use eventsctl::Cli;

fn main() -> ExitCode {
    // A dead letter's headers may be nested as deep as a frame allows (build-support/docs/design.md, Security).
    if let Err(error) = messaging::limits::ensure_thread_stacks() {
        eprintln!("eventsctl: cannot set the threads' stack: {error}");
        return ExitCode::FAILURE;
    }
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let cli = Cli::parse();
    match eventsctl::run(cli, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eventsctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}
