//! `loadgen`: drives `CreateUser` at a given concurrency against a running stack, watches
//! `payment_processed` on a private queue, and reports accepted calls and completed flows per
//! second, calls the service rejected as saturated (`RESOURCE_EXHAUSTED`) or that failed, RPC
//! and end-to-end latency percentiles, and whether every accepted user got exactly one
//! `payment_processed`. Exits 1 when the consistency check fails. `loadgen ceiling` measures
//! what the same durable work costs on this machine without the services.

mod ceiling;
mod refusal;
mod report;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties, options::BasicAckOptions};
use messaging::{BrokerAddresses, Namespace, Topology};
use prost::Message;
use proto::{
    Event,
    payment::v1::PaymentProcessed,
    user::v1::{CreateUserRequest, Plan, user_service_client::UserServiceClient},
};

use crate::{refusal::Refusal, report::Report};

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

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Concurrent CreateUser calls (at most this many in flight).
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Start calls at this many per second instead of as fast as the concurrency allows.
    #[arg(long)]
    rate: Option<f64>,
    /// How many users to create (unless --duration is given).
    #[arg(long, short = 'n', default_value_t = 1000)]
    users: u64,
    /// Create users for this many seconds instead of a fixed number.
    #[arg(long)]
    duration: Option<u64>,
    /// How long to wait for the last flows to complete.
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
    /// The user service; several instances as a comma-separated list, the concurrent callers
    /// spread over them in turn.
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
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What the run observed, per user.
#[derive(Debug, Default)]
struct Observations {
    /// user_id → when its CreateUser was sent.
    sent: HashMap<String, Instant>,
    /// user_id → when each of its payment_processed arrived.
    completed: HashMap<String, Vec<Instant>>,
    rpc_latencies: Vec<Duration>,
    /// Calls answered `RESOURCE_EXHAUSTED`: the service was saturated and created no user.
    rejected: u64,
    /// Calls that ended with any other error.
    failed: u64,
    /// The first of those errors, to say what went wrong.
    first_failure: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ceiling(args)) => ceiling::run(args).await,
        None => load(cli.run).await,
    }
}

async fn load(cli: RunArgs) -> anyhow::Result<()> {
    if let Some(rate) = cli.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
    }
    let topology = Topology::new(Namespace::parse(&cli.bus_namespace)?);
    let observations = Arc::new(Mutex::new(Observations::default()));

    // Watch payment_processed on a private queue before creating anyone.
    let amqp = cli.broker.connect().await?;
    let mut deliveries = topology
        .watch(&amqp, PaymentProcessed::ROUTING_KEY)
        .await
        .context(
            "cannot bind to the events exchange: is the stack running, with this BUS_NAMESPACE?",
        )?;
    let watcher = {
        let observations = observations.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = deliveries.next().await {
                let arrived = Instant::now();
                if let Ok(event) = PaymentProcessed::decode(delivery.data.as_slice()) {
                    observations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .completed
                        .entry(event.user_id)
                        .or_default()
                        .push(arrived);
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        })
    };

    // Drive CreateUser.
    let mut instances = Vec::new();
    for addr in cli
        .user_addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        instances.push(
            UserServiceClient::connect(addr.to_owned())
                .await
                .with_context(|| format!("cannot reach the user service at {addr}"))?,
        );
    }
    anyhow::ensure!(!instances.is_empty(), "USER_SERVICE_ADDR names no address");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let deadline = cli.duration.map(|secs| started + Duration::from_secs(secs));
    let next = Arc::new(AtomicU64::new(0));
    let workers = (0..cli.concurrency.max(1)).map(|worker| {
        let (mut users, observations, next, run) = (
            instances[worker % instances.len()].clone(),
            observations.clone(),
            next.clone(),
            run.clone(),
        );
        let limit = if deadline.is_some() {
            u64::MAX
        } else {
            cli.users
        };
        let interval = cli.rate.map(|rate| Duration::from_secs_f64(1.0 / rate));
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                // At a fixed rate, call i starts at its slot (or at once when behind).
                if let Some(interval) = interval {
                    tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
                }
                let sent = Instant::now();
                let outcome = users
                    .create_user(CreateUserRequest {
                        email: format!("loadgen-{run}-{i}@example.com"),
                        name: format!("Load {i}"),
                        plan: Plan::Basic.into(),
                        request_id: uuid::Uuid::new_v4().to_string(),
                    })
                    .await;
                let retry_after = {
                    let mut observations = observations.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(response) => {
                            observations.rpc_latencies.push(sent.elapsed());
                            if let Some(user) = response.into_inner().user {
                                observations.sent.insert(user.user_id, sent);
                            }
                            None
                        }
                        Err(status) => match Refusal::of(&status) {
                            Refusal::Rejected { retry_after } => {
                                observations.rejected += 1;
                                retry_after
                            }
                            Refusal::Failed { code, message } => {
                                observations.failed += 1;
                                observations
                                    .first_failure
                                    .get_or_insert_with(|| format!("{code:?}: {message}"));
                                None
                            }
                        },
                    }
                };
                // A saturated service said when to call again: this caller waits that long
                // (never past the run's end), as a well-behaved client would.
                if let Some(delay) = retry_after {
                    let until = Instant::now() + delay;
                    tokio::time::sleep_until(deadline.map_or(until, |d| until.min(d)).into()).await;
                }
            }
        }
    });
    let progress = report::progress(observations.clone(), started);
    tokio::select! {
        _ = futures_util::future::join_all(workers) => {}
        _ = progress => {}
    }
    let created_in = started.elapsed();

    // Drain: wait until every accepted user completed, or the timeout.
    let drain_deadline = Instant::now() + Duration::from_secs(cli.drain_timeout);
    loop {
        let done = {
            let observations = observations.lock().unwrap_or_else(|e| e.into_inner());
            observations
                .sent
                .keys()
                .all(|user| observations.completed.contains_key(user))
        };
        if done || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A moment more, so a duplicate on the wire would be seen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    let _ = amqp.close(200, "done".into()).await;

    let observations = observations.lock().unwrap_or_else(|e| e.into_inner());
    let mut report = Report::new(&observations, started, created_in, cli.concurrency);
    report.rate = cli.rate;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        eprintln!();
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
