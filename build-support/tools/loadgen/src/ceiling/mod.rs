//! `loadgen ceiling`: what the durable work of one flow costs on this machine, without the
//! services' transport (no gRPC, no broker between the steps, no logs, metrics or traces).
//!
//! On a scratch database migrated by the services' own migrators, it runs the transactions the
//! stack runs for a flow through the services' own code and batch sizes: the user service's
//! `repository::create_batch` (the users of a batch of calls and their outbox rows, written for
//! the dispatcher), the delete of published rows a dispatch makes after the broker's confirm,
//! and the three consumers' batches through the messaging crate's `apply_batch` (inbox
//! rows, the handler's effect, outbox rows) with the services' handlers; the payment handler's
//! first step (record the intents, charge the simulator) runs before its batch, as in the
//! consumer. Each consumer step is fed the events the step before it wrote to the outbox. On a
//! scratch durable queue it publishes persistent messages of those events with confirms, and
//! consumes them with acks. Each step is measured three times: at full load for its throughput,
//! one at a time back to back for its latency, and one at a time spaced out like the benchmark's
//! idle load (one every 50 ms) for its latency when the machine has been idle in between (which
//! costs more than back to back on a VM: its processes are woken from sleep at every step).
//!
//! The ceiling adds up what one flow costs: one user's share of a user transaction, three
//! deleted rows, one
//! message through each consumer, and three messages through the broker, each cost the inverse
//! of that step's throughput measured alone. Postgres and RabbitMQ share the machine's cores, so
//! their costs add too. The latency sum adds the steps on a flow's path, from the user
//! transaction to the `payment_processed` message's delivery: the user transaction, the order
//! and payment batches and three broker hops (the delete of published rows follows a confirm
//! that the next step does not wait for, and the order service's `payment_processed` batch
//! runs beside the delivery that ends the flow).

mod broker;
mod steps;
mod table;

use std::{
    collections::VecDeque,
    future::Future,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::TryFutureExt;
use messaging::topology::{
    ORDER_SERVICE_PAYMENT_PROCESSED, ORDER_SERVICE_USER_CREATED, PAYMENT_SERVICE_ORDER_CREATED,
};
use order_service::{
    domain::{PriceList, price_list::DEFAULT_PRICES},
    handlers::{PaymentProcessedHandler, UserCreatedHandler},
};
use payment_service::{
    gateway::{self, SimulatedGateway},
    handlers::{ChargeSettings, OrderCreatedHandler},
};
use service_kit::database;
use sqlx::{ConnectOptions, PgPool, postgres::PgConnectOptions};
use uuid::Uuid;

use self::{
    broker::broker,
    steps::{
        consume, consumer_step, create_users, drain, fill_outbox, new_users, remove_published,
        take, user_created,
    },
    table::{table, to_json},
};

/// Measure the machine's ceiling: the durable work of a flow, without the services.
#[derive(Debug, clap::Args)]
pub(crate) struct CeilingArgs {
    /// The Postgres server (a scratch database is created on it, and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    #[command(flatten)]
    broker: crate::BrokerArgs,
    /// The type of the scratch queue, as the services declare theirs (`quorum` or `classic`).
    #[arg(long, env = "QUEUE_TYPE", default_value = "quorum")]
    queue_type: messaging::QueueType,
    /// Concurrent user transactions: one per user service instance, whose writer commits one
    /// batch at a time.
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// CreateUser calls per user transaction at full load: the user service's
    /// CREATE_USER_BATCH_MAX, which its writer's batches reach once that many calls wait.
    #[arg(long, default_value_t = 64)]
    user_batch: usize,
    /// Messages per consumer transaction and rows per relay pass (the consumers' batch size).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Concurrent batch transactions per consumer step, and consumers on the scratch queue: enough
    /// to load the machine (a service runs CONSUMER_WORKERS, default 1, per consumer; a busier
    /// step gives a higher, stricter ceiling).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// How long each throughput step runs.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// One-at-a-time samples per latency step, back to back.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// One-at-a-time samples per latency step spaced out by --idle-pace-ms (the idle latency).
    #[arg(long, default_value_t = 60)]
    idle_samples: usize,
    /// Milliseconds from the start of one idle sample to the next: 50, as the benchmark's idle
    /// load of 20 calls per second.
    #[arg(long, default_value_t = 50)]
    idle_pace_ms: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// One step of a flow, measured.
#[derive(Debug, Clone)]
struct Step {
    name: &'static str,
    /// Units (transactions, rows or messages, see `unit`) per second at full load.
    throughput: f64,
    unit: &'static str,
    /// How many units of this step one flow needs.
    per_flow: f64,
    /// Median latency of one unit, one at a time.
    latency: Latency,
    /// How many units of latency lie on one flow's path.
    hops: f64,
}

/// A step's median latency of one unit, one at a time.
#[derive(Debug, Clone, Copy)]
struct Latency {
    /// Back to back.
    alone: Duration,
    /// Spaced out like the benchmark's idle load.
    idle: Duration,
}

/// How a step's latency is sampled: `samples` back to back, then `idle_samples`, each started
/// `idle_pace` after the one before.
#[derive(Debug, Clone, Copy)]
struct Sampling {
    samples: usize,
    idle_samples: usize,
    idle_pace: Duration,
}

impl Sampling {
    fn new(args: &CeilingArgs) -> Self {
        Self {
            samples: args.samples.max(1),
            idle_samples: args.idle_samples.max(1),
            idle_pace: Duration::from_millis(args.idle_pace_ms),
        }
    }

    /// How many units the samples use.
    fn units(&self) -> usize {
        self.samples + self.idle_samples
    }

    /// Takes the samples one after another with `sample`, which returns the time of one unit:
    /// back to back, then each idle one `idle_pace` after the start of the one before. The
    /// medians of each kind.
    async fn take<F, Fut>(&self, mut sample: F) -> anyhow::Result<Latency>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Duration>>,
    {
        let mut alone = Vec::with_capacity(self.samples);
        for _ in 0..self.samples {
            alone.push(sample().await?);
        }
        let mut idle = Vec::with_capacity(self.idle_samples);
        let mut next = Instant::now();
        for _ in 0..self.idle_samples {
            tokio::time::sleep_until(next.into()).await;
            next = Instant::now() + self.idle_pace;
            idle.push(sample().await?);
        }
        Ok(Latency {
            alone: median(alone),
            idle: median(idle),
        })
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

impl Step {
    /// Machine time one flow spends on this step.
    fn cost(&self) -> f64 {
        self.per_flow / self.throughput
    }
}

pub(crate) async fn run(args: CeilingArgs) -> anyhow::Result<()> {
    let scratch = format!("loadgen_ceiling_{}", Uuid::new_v4().simple());
    let server = PgConnectOptions::from_str(&args.postgres_url).context("bad --postgres-url")?;
    let mut admin = server.connect().await.context("cannot reach PostgreSQL")?;
    sqlx::query(&format!("create database {scratch}"))
        .execute(&mut admin)
        .await?;
    let result = measure(&args, server.clone().database(&scratch)).await;
    sqlx::query(&format!("drop database if exists {scratch} with (force)"))
        .execute(&mut admin)
        .await?;
    let steps = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&args, &steps))?);
    } else {
        print!("{}", table(&args, &steps));
    }
    Ok(())
}

async fn measure(args: &CeilingArgs, database: PgConnectOptions) -> anyhow::Result<Vec<Step>> {
    // As the services' pools and sessions, with room for every task of a step.
    let pool = database::pool_options(u32::try_from(
        args.concurrency.max(args.workers).max(3) + 2,
    )?)
    .connect_with(database::session_options(database))
    .await?;
    migrate(&pool).await?;
    let span = Duration::from_secs(args.seconds);
    let batch = args.batch.max(1);
    let mut steps = Vec::new();

    eprintln!("ceiling: user transactions");
    let user_batch = args.user_batch.max(1);
    let throughput = at_full_load(args.concurrency, span, |_| {
        let pool = pool.clone();
        async move { create_users(&pool, user_batch).await }
    })
    .await?;
    let latency = one_at_a_time(args, || create_users(&pool, 1).map_ok(drop)).await?;
    steps.push(Step {
        name: "user: users + outbox rows",
        throughput,
        unit: "user",
        per_flow: 1.0,
        latency,
        hops: 1.0,
    });

    eprintln!("ceiling: dispatched rows");
    // Each service deletes what it published, a batch at a time, beside the others.
    let queued = (throughput * span.as_secs_f64() * 2.0).max(10_000.0) as usize;
    let published = Mutex::new(VecDeque::from(fill_outbox(&pool, queued).await?));
    let throughput = at_full_load(3, span, |_| {
        let ids = take(&published, batch);
        let pool = &pool;
        async move {
            if ids.is_empty() {
                return Ok(0);
            }
            remove_published(pool, ids).await
        }
    })
    .await?;
    drain(&pool).await?;
    let units = Sampling::new(args).units();
    let alone = Mutex::new(VecDeque::from(fill_outbox(&pool, units).await?));
    let latency = one_at_a_time(args, || async {
        remove_published(&pool, take(&alone, 1)).await.map(drop)
    })
    .await?;
    steps.push(Step {
        name: "dispatch: delete published rows",
        throughput,
        unit: "row",
        per_flow: 3.0,
        latency,
        // Off the path: the next step has its message by then.
        hops: 0.0,
    });
    // What the relay left is not the consumers' input; each consumer step reads what the step
    // before it wrote.
    let mut events = vec![user_created()];
    drain(&pool).await?;

    eprintln!("ceiling: consumer batches");
    let prices = PriceList::parse(DEFAULT_PRICES, "USD").map_err(anyhow::Error::msg)?;
    let orders = UserCreatedHandler::new(Arc::new(prices));
    let consumer = ORDER_SERVICE_USER_CREATED;
    let throughput = at_full_load(args.workers, span, |_| {
        let (pool, orders) = (&pool, &orders);
        async move { consume(pool, consumer, orders, new_users(batch)?).await }
    })
    .await?;
    let latency = one_at_a_time(args, || async {
        consume(&pool, consumer, &orders, new_users(1)?)
            .await
            .map(drop)
    })
    .await?;
    steps.push(Step {
        name: "order: user_created batch",
        throughput,
        unit: "msg",
        per_flow: 1.0,
        latency,
        hops: 1.0,
    });

    let gateway = SimulatedGateway::new(pool.clone(), gateway::Latency::NONE);
    let payments = OrderCreatedHandler::new(Arc::new(gateway), ChargeSettings::default());
    let step = consumer_step(
        args,
        &pool,
        PAYMENT_SERVICE_ORDER_CREATED,
        &payments,
        "payment: order_created batch",
        &mut events,
    )
    .await?;
    steps.push(step);
    let step = consumer_step(
        args,
        &pool,
        ORDER_SERVICE_PAYMENT_PROCESSED,
        &PaymentProcessedHandler,
        "order: payment_processed batch",
        &mut events,
    )
    .await?;
    // Beside the delivery of `payment_processed` that ends the flow, not before it.
    steps.push(Step { hops: 0.0, ..step });
    pool.close().await;

    eprintln!("ceiling: RabbitMQ");
    steps.push(broker(args, span, &events).await?);
    Ok(steps)
}

/// The messaging tables and each service's tables, by the services' own migrators.
async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    for migrator in [
        user_service::migrator(),
        order_service::migrator(),
        payment_service::migrator(),
    ] {
        service_kit::database::migrate(pool, migrator).await?;
    }
    Ok(())
}

/// Runs `tasks` copies of `unit` in loops for `span`; the units they did per second. A unit
/// returning 0 has nothing left to do, and its task stops.
async fn at_full_load<F, Fut>(tasks: usize, span: Duration, unit: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    let started = Instant::now();
    let deadline = started + span;
    let loops = (0..tasks.max(1)).map(|task| {
        let unit = &unit;
        async move {
            let mut done = 0;
            while Instant::now() < deadline {
                match unit(task).await? {
                    0 => break,
                    n => done += n,
                }
            }
            Ok::<_, anyhow::Error>((done, Instant::now()))
        }
    });
    let mut total = 0;
    let mut last = started;
    for outcome in futures_util::future::join_all(loops).await {
        let (done, ended) = outcome?;
        total += done;
        last = last.max(ended);
    }
    let elapsed = last.duration_since(started).as_secs_f64();
    anyhow::ensure!(total > 0, "nothing was done");
    Ok(total as f64 / elapsed)
}

/// The median times of runs of `unit` one at a time, back to back and spaced out (see
/// [`Sampling`]).
async fn one_at_a_time<F, Fut>(args: &CeilingArgs, unit: F) -> anyhow::Result<Latency>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    Sampling::new(args)
        .take(|| {
            let run = unit();
            async move {
                let started = Instant::now();
                run.await?;
                Ok(started.elapsed())
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_samples_start_a_pace_apart_and_each_kind_has_its_own_median() {
        let sampling = Sampling {
            samples: 3,
            idle_samples: 3,
            idle_pace: Duration::from_millis(20),
        };
        let times = [3, 1, 2, 9, 5, 7].map(Duration::from_millis);
        let mut starts = Vec::new();
        let latency = sampling
            .take(|| {
                starts.push(Instant::now());
                std::future::ready(Ok(times[starts.len() - 1]))
            })
            .await
            .expect("every sample succeeds");

        assert_eq!(starts.len(), sampling.units());
        assert_eq!(latency.alone, Duration::from_millis(2));
        assert_eq!(latency.idle, Duration::from_millis(7));
        for pair in starts[3..].windows(2) {
            assert!(pair[1] - pair[0] >= sampling.idle_pace, "{starts:?}");
        }
    }
}
