//! What every service's `main` does, written once: give every thread the stack a hostile message
//! needs, answer the `healthcheck` subcommand, set up telemetry, build the application and run
//! it until SIGINT or SIGTERM.

use std::future::Future;

use anyhow::Context;

use crate::{
    Application, CommonArgs, ServiceDefaults, Settings,
    healthcheck::{self, ServiceCommand},
    shutdown, telemetry,
};

/// Runs the service described by `defaults`: `args` are its parsed common flags, `command` its
/// subcommand, and `build` makes the application from the resolved settings. Call it from a
/// plain (not `#[tokio::main]`) `main`, first thing: it may run the binary again, in place, with
/// `RUST_MIN_STACK` set (see `messaging::limits::ensure_thread_stacks`), and it starts the
/// runtime itself.
pub fn run<B, F>(
    defaults: &ServiceDefaults,
    args: CommonArgs,
    command: Option<ServiceCommand>,
    build: B,
) -> anyhow::Result<()>
where
    B: FnOnce(Settings) -> F,
    F: Future<Output = anyhow::Result<Application>>,
{
    messaging::limits::ensure_thread_stacks()
        .context("cannot give its threads the stack a hostile message needs")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let settings = args.resolve(defaults)?;
        if let Some(ServiceCommand::Healthcheck) = command {
            return healthcheck::check(settings.grpc_addr).await;
        }
        let _telemetry = telemetry::init(&settings.rust_log, settings.log_format, defaults.name)?;
        let application = build(settings)
            .await
            .with_context(|| format!("{} failed to start", defaults.name))?;
        application.run_until_stopped(shutdown::signal()).await
    })
}
