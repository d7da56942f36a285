//! `loadgen ceiling`: what the durable work of one flow costs on this machine, without the
//! services' transport (no gRPC, no broker between the steps, no logs, metrics or traces).
//!
//! On a scratch database migrated by the services' own migrators, it runs the transactions the
//! stack runs for a flow through the services' own code and batch sizes: the user service's
//! `repository::create` (the user and its outbox row), the relay's claim-and-delete of outbox
//! rows, and the three consumers' batches through the messaging crate's `apply_batch` (inbox
//! rows, the handler's effect, outbox rows) with the services' handlers; the payment handler's
//! first step (record the intents, charge the simulator) runs before its batch, as in the
//! consumer. Each consumer step is fed the events the step before it wrote to the outbox. On a
//! scratch durable queue it publishes persistent messages of those events with confirms, and
//! consumes them with acks. Each step is measured twice: at full load for its throughput, and
//! one at a time for its latency.
//!
//! The ceiling adds up what one flow costs: one user transaction, three relayed rows, one
//! message through each consumer, and three messages through the broker, each cost the inverse
//! of that step's throughput measured alone. Postgres and RabbitMQ share the machine's cores, so
//! their costs add too.

use std::{
    collections::VecDeque,
    future::Future,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use messaging::{
    Envelope, EventContext, Handler, Incoming, TraceParent,
    consumer::{BatchMessage, Outcome, apply_batch, decode, take_ready},
    outbox,
    topology::{
        Consumes, ORDER_SERVICE_PAYMENT_PROCESSED, ORDER_SERVICE_USER_CREATED,
        PAYMENT_SERVICE_ORDER_CREATED,
    },
};
use order_service::{
    domain::{PriceList, price_list::DEFAULT_PRICES},
    handlers::{PaymentProcessedHandler, UserCreatedHandler},
};
use payment_service::{
    gateway::{Latency, SimulatedGateway},
    handlers::{ChargeSettings, OrderCreatedHandler},
};
use proto::{Event, user::v1::UserCreated};
use serde_json::json;
use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use user_service::domain::{NewUser, Plan, User};
use uuid::Uuid;

/// Measure the machine's ceiling: the durable work of a flow, without the services.
#[derive(Debug, clap::Args)]
pub(crate) struct CeilingArgs {
    /// The Postgres server (a scratch database is created on it, and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    #[command(flatten)]
    broker: crate::BrokerArgs,
    /// Concurrent user transactions: the user service runs at most its connection pool's
    /// size (16) at once, however many calls wait.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
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
    /// One-at-a-time samples per latency step.
    #[arg(long, default_value_t = 200)]
    samples: usize,
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
    latency: Duration,
    /// How many units of latency lie on one flow's path.
    hops: f64,
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
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(
            args.concurrency.max(args.workers).max(3) + 2,
        )?)
        .connect_with(database)
        .await?;
    migrate(&pool).await?;
    let span = Duration::from_secs(args.seconds);
    let batch = args.batch.max(1);
    let mut steps = Vec::new();

    eprintln!("ceiling: user transactions");
    let throughput = at_full_load(args.concurrency, span, |_| {
        let pool = pool.clone();
        async move { create_user(&pool).await.map(|()| 1) }
    })
    .await?;
    let latency = one_at_a_time(args.samples, || create_user(&pool)).await?;
    steps.push(Step {
        name: "user: user + outbox row",
        throughput,
        unit: "tx",
        per_flow: 1.0,
        latency,
        hops: 1.0,
    });

    eprintln!("ceiling: relay passes");
    // One relay per service, as in the stack; they share the rows through `skip locked`.
    let queued = (throughput * span.as_secs_f64() * 2.0).max(10_000.0) as usize;
    fill_outbox(&pool, queued).await?;
    let throughput = at_full_load(3, span, |_| {
        let pool = pool.clone();
        async move { Ok(relay_pass(&pool, batch).await?.len() as u64) }
    })
    .await?;
    fill_outbox(&pool, args.samples).await?;
    let latency = one_at_a_time(args.samples, || async {
        anyhow::ensure!(relay_pass(&pool, 1).await?.len() == 1, "no outbox row left");
        Ok(())
    })
    .await?;
    steps.push(Step {
        name: "relay: claim + delete rows",
        throughput,
        unit: "row",
        per_flow: 3.0,
        latency,
        hops: 3.0,
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
    let latency = one_at_a_time(args.samples, || async {
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

    let gateway = SimulatedGateway::new(pool.clone(), Latency::NONE);
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
    steps.push(step);
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

/// A consumer step fed with what the step before it wrote to the outbox (taken out of it): at
/// full load, `--samples` messages kept back for one at a time. The first event it reads joins
/// `events`.
async fn consumer_step<H: Handler>(
    args: &CeilingArgs,
    pool: &PgPool,
    consumer: Consumes<H::Event>,
    handler: &H,
    name: &'static str,
    events: &mut Vec<Envelope>,
) -> anyhow::Result<Step> {
    let written = drain(pool).await?;
    events.extend(written.first().cloned());
    let mut input = VecDeque::with_capacity(written.len());
    for envelope in &written {
        input.push_back(incoming::<H::Event>(envelope)?);
    }
    let alone = Mutex::new(VecDeque::from(
        input
            .drain(..args.samples.min(input.len()))
            .collect::<Vec<_>>(),
    ));
    let input = Mutex::new(input);
    let batch = args.batch.max(1);
    let throughput = at_full_load(args.workers, Duration::from_secs(args.seconds), |_| {
        let messages = take(&input, batch);
        async move { consume(pool, consumer, handler, messages).await }
    })
    .await?;
    let latency = one_at_a_time(args.samples, || async {
        let messages = take(&alone, 1);
        anyhow::ensure!(!messages.is_empty(), "no {} left", H::Event::TYPE_NAME);
        consume(pool, consumer, handler, messages).await.map(drop)
    })
    .await?;
    Ok(Step {
        name,
        throughput,
        unit: "msg",
        per_flow: 1.0,
        latency,
        hops: 1.0,
    })
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

/// The median time of `samples` runs of `unit`, one after the other.
async fn one_at_a_time<F, Fut>(samples: usize, unit: F) -> anyhow::Result<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(samples.max(1));
    for _ in 0..samples.max(1) {
        let started = Instant::now();
        unit().await?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

fn context() -> EventContext {
    EventContext {
        correlation_id: Uuid::new_v4().to_string(),
        causation_id: Uuid::now_v7().to_string(),
        traceparent: TraceParent::new_root(),
    }
}

/// The `user_created` of a new user, as the user service announces it.
fn user_created() -> Envelope {
    let user_id = Uuid::new_v4();
    let user = User {
        user_id,
        email: format!("ceiling-{user_id}@example.com"),
        name: "Ceiling Test".into(),
        plan: Plan::Basic,
        create_time: chrono::Utc::now(),
        correlation_id: None,
    };
    Envelope::new(&user_service::wire::user_created(&user), &context())
}

/// `n` new users' `user_created`, as the order service's consumer receives them.
fn new_users(n: usize) -> anyhow::Result<Vec<Incoming<UserCreated>>> {
    (0..n).map(|_| incoming(&user_created())).collect()
}

/// An envelope through the consumer's decoding, as if the broker had delivered it.
fn incoming<E: Event>(envelope: &Envelope) -> anyhow::Result<Incoming<E>> {
    let mut delivery = Delivery::mock(
        1,
        "".into(),
        envelope.routing_key.as_str().into(),
        false,
        envelope.payload.clone(),
    );
    delivery.properties = envelope.properties("loadgen");
    Ok(decode(&delivery)?)
}

/// Up to `n` items from the front of `from`.
fn take<T>(from: &Mutex<VecDeque<T>>, n: usize) -> Vec<T> {
    let mut from = from.lock().expect("not poisoned");
    let n = n.min(from.len());
    from.drain(..n).collect()
}

/// CreateUser's transaction, by the user service's repository: the user and its outbox row.
async fn create_user(pool: &PgPool) -> anyhow::Result<()> {
    let request_id = Uuid::new_v4();
    let new_user = NewUser::parse(
        &format!("ceiling-{request_id}@example.com"),
        "Ceiling Test",
        Plan::Basic,
        &request_id.to_string(),
    )
    .map_err(|violations| anyhow::anyhow!("invalid user: {violations:?}"))?;
    user_service::repository::create(pool, &new_user, &context()).await?;
    Ok(())
}

/// Puts `rows` outbox rows in place for the relay, in chunks.
async fn fill_outbox(pool: &PgPool, rows: usize) -> anyhow::Result<()> {
    let mut left = rows;
    while left > 0 {
        let chunk: Vec<Envelope> = (0..left.min(1000)).map(|_| user_created()).collect();
        left -= chunk.len();
        let mut connection = pool.acquire().await?;
        outbox::enqueue_all(&mut connection, &chunk).await?;
    }
    Ok(())
}

/// The relay's transaction, without the publish: claim due rows, remove them. Returns them.
async fn relay_pass(pool: &PgPool, batch: usize) -> anyhow::Result<Vec<Envelope>> {
    let mut tx = pool.begin().await?;
    let claimed = outbox::claim_due(&mut tx, batch).await?;
    let ids: Vec<Uuid> = claimed.iter().map(|row| row.message_id).collect();
    outbox::remove(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Everything in the outbox, taken out of it.
async fn drain(pool: &PgPool) -> anyhow::Result<Vec<Envelope>> {
    let mut drained = Vec::new();
    loop {
        let rows = relay_pass(pool, 1000).await?;
        if rows.is_empty() {
            return Ok(drained);
        }
        drained.extend(rows);
    }
}

/// One consumer batch, the way the consumer applies it: the handler's first step outside the
/// transaction, then `apply_batch`. Every message must be applied (none a duplicate).
async fn consume<H: Handler>(
    pool: &PgPool,
    consumer: Consumes<H::Event>,
    handler: &H,
    messages: Vec<Incoming<H::Event>>,
) -> anyhow::Result<u64> {
    if messages.is_empty() {
        return Ok(0);
    }
    let refs: Vec<_> = messages.iter().collect();
    let prepared = handler
        .prepare(pool, &refs)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let batch: Vec<_> = messages
        .iter()
        .zip(&prepared)
        .map(|(message, prepared)| BatchMessage {
            message,
            prepared,
            span: tracing::Span::none(),
        })
        .collect();
    let outcomes = apply_batch(pool, consumer.consumer, handler, &batch).await?;
    anyhow::ensure!(
        outcomes.iter().all(|outcome| *outcome == Outcome::Applied),
        "a message of the batch was a duplicate"
    );
    Ok(outcomes.len() as u64)
}

/// Persistent messages of the events' sizes through a durable queue: three publishers (one
/// relay per service) publishing batches with confirms, `workers` consumers acking each batch
/// with one `multiple` ack; then one message at a time, publish to delivery.
async fn broker(args: &CeilingArgs, span: Duration, events: &[Envelope]) -> anyhow::Result<Step> {
    let amqp = Connection::connect(&args.broker.amqp_url, ConnectionProperties::default())
        .await
        .context("cannot reach RabbitMQ")?;
    let queue = format!("loadgen.ceiling.{}", Uuid::new_v4().simple());
    let setup = amqp.create_channel().await?;
    setup
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let measured = broker_steps(args, &amqp, &queue, span, events).await;
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), amqp.close(200, "done".into())).await;
    let (throughput, latency) = measured?;
    Ok(Step {
        name: "broker: publish, confirm, consume, ack",
        throughput,
        unit: "msg",
        per_flow: 3.0,
        latency,
        hops: 3.0,
    })
}

/// The flow's events (one of each, as the services wrote them), with their AMQP properties.
fn messages(events: &[Envelope]) -> Vec<(Vec<u8>, BasicProperties)> {
    events
        .iter()
        .map(|envelope| (envelope.payload.clone(), envelope.properties("loadgen")))
        .collect()
}

async fn broker_steps(
    args: &CeilingArgs,
    amqp: &Connection,
    queue: &str,
    span: Duration,
    events: &[Envelope],
) -> anyhow::Result<(f64, Duration)> {
    anyhow::ensure!(!events.is_empty(), "no event to publish");
    let messages = Arc::new(messages(events));
    let batch = args.batch.max(1);

    // Consumers count what they acked until told to stop.
    let consumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut consumers = Vec::new();
    for worker in 0..args.workers.max(1) {
        let channel = amqp.create_channel().await?;
        channel.basic_qos(64, BasicQosOptions::default()).await?;
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                format!("ceiling-{worker}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (consumed, stop) = (consumed.clone(), stop.clone());
        consumers.push(tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = deliveries.next() => next,
                };
                let Some(Ok(first)) = first else { return };
                // As the consumer batches: what the broker has already pushed, acked at once.
                let mut received = vec![first];
                let ended = take_ready(&mut deliveries, &mut received, batch);
                let n = received.len();
                let Some(last) = received.pop() else {
                    return;
                };
                if last.ack(BasicAckOptions { multiple: n > 1 }).await.is_err() {
                    return;
                }
                consumed.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if ended.is_some() {
                    return;
                }
            }
        }));
    }

    let started = Instant::now();
    let deadline = started + span;
    let mut publishers = Vec::new();
    for _ in 0..3 {
        let channel = amqp.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (messages, queue) = (messages.clone(), queue.to_owned());
        publishers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut confirms = Vec::with_capacity(batch);
                for i in 0..batch {
                    let (payload, properties) = &messages[i % messages.len()];
                    let confirm = channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            payload,
                            properties.clone(),
                        )
                        .await?;
                    confirms.push(confirm);
                }
                for confirm in futures_util::future::join_all(confirms).await {
                    anyhow::ensure!(confirm?.is_ack(), "the broker nacked a message");
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for publisher in futures_util::future::join_all(publishers).await {
        publisher??;
    }
    tokio::time::sleep_until(deadline.into()).await;
    let throughput = consumed.load(std::sync::atomic::Ordering::Relaxed) as f64
        / started.elapsed().as_secs_f64();
    stop.cancel();
    for consumer in consumers {
        consumer.await?;
    }

    // One at a time: publish, then wait for the delivery.
    let channel = amqp.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .queue_purge(queue.into(), Default::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "ceiling-latency".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut times = Vec::with_capacity(args.samples.max(1));
    for i in 0..args.samples.max(1) {
        let (payload, properties) = &messages[i % messages.len()];
        let sent = Instant::now();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload,
                properties.clone(),
            )
            .await?;
        let delivery = deliveries.next().await.context("the consumer stopped")??;
        times.push(sent.elapsed());
        delivery.ack(BasicAckOptions::default()).await?;
        confirm.await?;
    }
    times.sort_unstable();
    Ok((throughput, times[times.len() / 2]))
}

/// What the steps add up to.
struct Totals {
    postgres: f64,
    broker: f64,
    ceiling: f64,
    hop_sum: Duration,
}

fn totals(steps: &[Step]) -> Totals {
    let (db, mq): (Vec<&Step>, Vec<&Step>) = steps
        .iter()
        .partition(|step| !step.name.starts_with("broker"));
    let per_second = |steps: &[&Step]| 1.0 / steps.iter().map(|s| s.cost()).sum::<f64>();
    Totals {
        postgres: per_second(&db),
        broker: per_second(&mq),
        ceiling: per_second(&steps.iter().collect::<Vec<_>>()),
        hop_sum: steps
            .iter()
            .map(|step| step.latency.mul_f64(step.hops))
            .sum(),
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn table(args: &CeilingArgs, steps: &[Step]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ceiling: batch {}, {} workers per consumer, user concurrency {}",
        args.batch, args.workers, args.concurrency
    );
    let _ = writeln!(
        out,
        "{:<40} {:>14} {:>8} {:>12}",
        "step", "full load", "/flow", "alone p50"
    );
    for step in steps {
        let _ = writeln!(
            out,
            "{:<40} {:>10.0} {:<3}/s {:>8} {:>9.2} ms",
            step.name,
            step.throughput,
            step.unit,
            step.per_flow,
            millis(step.latency)
        );
    }
    let totals = totals(steps);
    let _ = writeln!(
        out,
        "postgres alone             {:>8.0} flows/s",
        totals.postgres
    );
    let _ = writeln!(
        out,
        "rabbitmq alone             {:>8.0} flows/s",
        totals.broker
    );
    let _ = writeln!(
        out,
        "ceiling (costs added)      {:>8.0} flows/s",
        totals.ceiling
    );
    let _ = writeln!(
        out,
        "per-hop latency sum        {:>8.2} ms",
        millis(totals.hop_sum)
    );
    out
}

fn to_json(args: &CeilingArgs, steps: &[Step]) -> serde_json::Value {
    let totals = totals(steps);
    json!({
        "batch": args.batch,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "steps": steps.iter().map(|step| json!({
            "name": step.name,
            "throughput_per_second": step.throughput,
            "unit": step.unit,
            "per_flow": step.per_flow,
            "latency_p50_ms": millis(step.latency),
            "hops": step.hops,
        })).collect::<Vec<_>>(),
        "postgres_flows_per_second": totals.postgres,
        "broker_flows_per_second": totals.broker,
        "ceiling_flows_per_second": totals.ceiling,
        "hop_latency_sum_ms": millis(totals.hop_sum),
    })
}
