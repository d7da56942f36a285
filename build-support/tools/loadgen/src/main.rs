//! `loadgen`: drives `CreateUser` against a running stack, watches `payment_processed` on a
//! private queue, and reports accepted calls and completed flows per second, calls the service
//! rejected as saturated (`RESOURCE_EXHAUSTED`) or that failed, RPC and end-to-end latency
//! percentiles, and whether every accepted user got exactly one `payment_processed`. Exits 1
//! when the consistency check fails. `loadgen sweep` runs open-loop steps of rising rate up to
//! past a measured peak, `loadgen plot` draws such a sweep's latency against its throughput,
//! and `loadgen ceiling` measures what the same durable work costs on this machine without the
//! services.

mod ceiling;
mod drive;
mod plan;
mod plot;
mod progress;
mod refusal;
mod report;
mod sweep;

use anyhow::Context;
use clap::Parser;
use lapin::{Connection, ConnectionProperties};
use messaging::BrokerAddresses;

use crate::plan::{Extent, Pace, Plan};

/// Load a running stack and measure it.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Measure the machine's ceiling: the durable work of a flow (Postgres transactions,
    /// persistent messages) without the services.
    Ceiling(ceiling::CeilingArgs),
    /// Offer rising open-loop rates, from a share of a measured peak to past it, and report
    /// each step's throughput, latency and refusals.
    Sweep(sweep::SweepArgs),
    /// Draw a sweep's end-to-end latency (p50, p99) against its completed flows per second as
    /// an SVG.
    Plot(plot::PlotArgs),
}

/// Where the broker is.
#[derive(Debug, clap::Args)]
pub(crate) struct BrokerArgs {
    /// The broker the stack uses: one URL, or a cluster's nodes as a comma-separated list.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp_url: String,
}

impl BrokerArgs {
    /// Connects to the first node of the list that answers.
    async fn connect(&self) -> anyhow::Result<Connection> {
        let addresses = BrokerAddresses::parse(&self.amqp_url)?;
        let (connection, _) = addresses
            .connect(0, &ConnectionProperties::default())
            .await
            .with_context(|| format!("cannot reach RabbitMQ at {addresses}"))?;
        Ok(connection)
    }
}

/// The stack a run loads.
#[derive(Debug, clap::Args)]
pub(crate) struct StackArgs {
    /// The user service; several instances as a comma-separated list, the calls spread over
    /// them in turn.
    #[arg(
        long,
        env = "USER_SERVICE_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    user_addr: String,
    #[command(flatten)]
    broker: BrokerArgs,
    /// The stack's BUS_NAMESPACE.
    #[arg(long, env = "BUS_NAMESPACE", default_value = "")]
    bus_namespace: String,
    /// How long to wait for the last flows to complete.
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Concurrent callers, each sending its next call when its last returns (closed loop).
    #[arg(long, short = 'c', default_value_t = 16, conflicts_with = "rate")]
    concurrency: usize,
    /// Start calls at this many per second instead, open loop: each call at its slot, however
    /// many are still in flight.
    #[arg(long)]
    rate: Option<f64>,
    /// How many users to create (unless --duration is given).
    #[arg(long, short = 'n', default_value_t = 1000)]
    users: u64,
    /// Create users for this many seconds instead of a fixed number.
    #[arg(long)]
    duration: Option<u64>,
    #[command(flatten)]
    stack: StackArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ceiling(args)) => ceiling::run(args).await,
        Some(Command::Sweep(args)) => sweep::run(args).await,
        Some(Command::Plot(args)) => plot::run(args),
        None => load(cli.run).await,
    }
}

async fn load(args: RunArgs) -> anyhow::Result<()> {
    let plan = Plan {
        pace: match args.rate {
            Some(rate) => Pace::open(rate)?,
            None => Pace::Closed {
                concurrency: args.concurrency.max(1),
            },
        },
        extent: match args.duration {
            Some(seconds) => Extent::Seconds(seconds),
            None => Extent::Users(args.users),
        },
        label: String::new(),
    };
    let report = drive::run(&args.stack, &plan).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.table());
    }
    anyhow::ensure!(
        report.consistent(),
        "inconsistent: {} accepted user(s) got no payment_processed, {} got more than one",
        report.missing,
        report.duplicated
    );
    Ok(())
}
