//! `loadgen ceiling`: what the durable work of one flow costs on this machine, without any
//! service logic (no gRPC, no decoding, no handlers, no logs, metrics or traces).
//!
//! On a scratch database with the services' own tables (their migrations), it runs the
//! transactions the stack runs for a flow, with the same statements and batch sizes: the user
//! service's insert of a user and its outbox row, the relay's claim-and-delete of outbox rows,
//! and the three consumers' batches (inbox rows, effect, outbox rows; the payment step also
//! records its intents and charges the simulator, each in a statement of its own, through the
//! payment service's own functions). On a scratch durable
//! queue it publishes persistent messages of the events' sizes with confirms, and consumes them
//! with acks. Each step is measured twice: at full load for its throughput, and one at a time
//! for its latency.
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
use futures_util::{FutureExt, StreamExt};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use messaging::{
    Envelope, EventContext, TraceParent, inbox, outbox,
    topology::{
        ORDER_SERVICE_PAYMENT_PROCESSED, ORDER_SERVICE_USER_CREATED, PAYMENT_SERVICE_ORDER_CREATED,
    },
};
use payment_service::{
    domain::{PaymentIntent, PaymentOutcome},
    gateway::{ChargeRequest, Latency, PaymentGateway, SimulatedGateway},
    repository, wire,
};
use proto::{
    order::v1::OrderCreated,
    payment::v1::{PaymentProcessed, PaymentStatus},
    user::v1::{Plan, UserCreated},
};
use serde_json::json;
use sqlx::{
    ConnectOptions, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
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
        async move { user_tx(&pool).await.map(|()| 1) }
    })
    .await?;
    let latency = one_at_a_time(args.samples, || user_tx(&pool)).await?;
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
        async move { relay_tx(&pool, batch).await }
    })
    .await?;
    fill_outbox(&pool, args.samples).await?;
    let latency = one_at_a_time(args.samples, || async {
        anyhow::ensure!(relay_tx(&pool, 1).await? == 1, "no outbox row left");
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

    eprintln!("ceiling: consumer batches");
    let created = Arc::new(Mutex::new(VecDeque::new()));
    let throughput = at_full_load(args.workers, span, |_| {
        let (pool, created) = (pool.clone(), created.clone());
        async move {
            let orders = order_tx(&pool, batch).await?;
            let made = orders.len() as u64;
            created.lock().expect("not poisoned").extend(orders);
            Ok(made)
        }
    })
    .await?;
    let latency = one_at_a_time(args.samples, || async {
        let orders = order_tx(&pool, 1).await?;
        created.lock().expect("not poisoned").extend(orders);
        Ok(())
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

    let paid = Arc::new(Mutex::new(VecDeque::new()));
    let take = |from: &Arc<Mutex<VecDeque<Uuid>>>, n: usize| {
        let mut from = from.lock().expect("not poisoned");
        let n = n.min(from.len());
        from.drain(..n).collect::<Vec<_>>()
    };
    // Orders kept back for the one-at-a-time runs, which follow the full-load ones.
    let to_pay = Arc::new(Mutex::new(VecDeque::from(take(&created, args.samples))));
    let throughput = at_full_load(args.workers, span, |_| {
        let (pool, created, paid) = (pool.clone(), created.clone(), paid.clone());
        async move {
            let orders = take(&created, batch);
            payment_tx(&pool, &orders).await?;
            paid.lock().expect("not poisoned").extend(&orders);
            Ok(orders.len() as u64)
        }
    })
    .await?;
    let to_settle = Arc::new(Mutex::new(VecDeque::from(take(&paid, args.samples))));
    let latency = one_at_a_time(args.samples, || async {
        let orders = take(&to_pay, 1);
        anyhow::ensure!(!orders.is_empty(), "no order left to pay");
        payment_tx(&pool, &orders).await?;
        to_settle.lock().expect("not poisoned").extend(&orders);
        Ok(())
    })
    .await?;
    steps.push(Step {
        name: "payment: order_created batch",
        throughput,
        unit: "msg",
        per_flow: 1.0,
        latency,
        hops: 1.0,
    });

    let throughput = at_full_load(args.workers, span, |_| {
        let (pool, paid) = (pool.clone(), paid.clone());
        async move {
            let orders = take(&paid, batch);
            settle_tx(&pool, &orders).await?;
            Ok(orders.len() as u64)
        }
    })
    .await?;
    let latency = one_at_a_time(args.samples, || async {
        let orders = take(&to_settle, 1);
        anyhow::ensure!(!orders.is_empty(), "no order left to settle");
        settle_tx(&pool, &orders).await.map(drop)
    })
    .await?;
    steps.push(Step {
        name: "order: payment_processed batch",
        throughput,
        unit: "msg",
        per_flow: 1.0,
        latency,
        hops: 1.0,
    });
    pool.close().await;

    eprintln!("ceiling: RabbitMQ");
    steps.push(broker(args, span).await?);
    Ok(steps)
}

/// The messaging tables and the services' tables, from their migrations.
async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let migrators = [
        messaging::migrator(),
        sqlx::migrate!("../user/migrations"),
        sqlx::migrate!("../order/migrations"),
        sqlx::migrate!("../payment/migrations"),
    ];
    for mut migrator in migrators {
        migrator.set_ignore_missing(true);
        migrator.run(pool).await?;
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

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

fn user_created(user_id: Uuid) -> Envelope {
    let event = UserCreated {
        user_id: user_id.to_string(),
        email: format!("ceiling-{user_id}@example.com"),
        name: "Ceiling Test".into(),
        plan: Plan::Basic.into(),
        create_time: Some(now()),
    };
    Envelope::new(&event, &context())
}

fn order_created(order_id: Uuid, user_id: Uuid) -> Envelope {
    let event = OrderCreated {
        order_id: order_id.to_string(),
        user_id: user_id.to_string(),
        user_email: format!("ceiling-{user_id}@example.com"),
        plan: Plan::Basic.into(),
        amount_minor: 1900,
        currency: "USD".into(),
        create_time: Some(now()),
    };
    Envelope::new(&event, &context())
}

fn payment_processed(payment_id: Uuid, order_id: Uuid) -> Envelope {
    let event = PaymentProcessed {
        payment_id: payment_id.to_string(),
        order_id: order_id.to_string(),
        user_id: Uuid::new_v4().to_string(),
        status: PaymentStatus::Succeeded.into(),
        decline_reason: String::new(),
        amount_minor: 1900,
        currency: "USD".into(),
        process_time: Some(now()),
    };
    Envelope::new(&event, &context())
}

/// CreateUser's transaction: the user and its outbox row.
async fn user_tx(pool: &PgPool) -> anyhow::Result<()> {
    let user_id = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into users (user_id, email, name, plan, request_id, correlation_id) \
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user_id)
    .bind(format!("ceiling-{user_id}@example.com"))
    .bind("Ceiling Test")
    .bind("basic")
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4().to_string())
    .execute(&mut *tx)
    .await?;
    outbox::enqueue(&mut tx, &user_created(user_id)).await?;
    tx.commit().await?;
    Ok(())
}

/// Puts `rows` outbox rows in place for the relay, in chunks.
async fn fill_outbox(pool: &PgPool, rows: usize) -> anyhow::Result<()> {
    let mut left = rows;
    while left > 0 {
        let chunk: Vec<Envelope> = (0..left.min(1000))
            .map(|_| user_created(Uuid::new_v4()))
            .collect();
        left -= chunk.len();
        let mut connection = pool.acquire().await?;
        outbox::enqueue_all(&mut connection, &chunk).await?;
    }
    Ok(())
}

/// The relay's transaction, without the publish: claim due rows, delete them.
async fn relay_tx(pool: &PgPool, batch: usize) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let claimed = outbox::claim_due(&mut tx, batch).await?;
    let ids: Vec<Uuid> = claimed.iter().map(|row| row.message_id).collect();
    sqlx::query("delete from outbox where message_id = any($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids.len() as u64)
}

/// The inbox rows of a batch of `n` fresh messages.
async fn inbox_rows(tx: &mut PgConnection, consumer: &str, n: usize) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    inbox::record_all(tx, consumer, &ids).await?;
    Ok(())
}

/// The order service's user_created batch: inbox rows, one order per message, outbox rows.
async fn order_tx(pool: &PgPool, batch: usize) -> anyhow::Result<Vec<Uuid>> {
    let mut tx = pool.begin().await?;
    inbox_rows(&mut tx, ORDER_SERVICE_USER_CREATED.consumer, batch).await?;
    let mut orders = Vec::with_capacity(batch);
    let mut caused = Vec::with_capacity(batch);
    for _ in 0..batch {
        let (order_id, user_id) = (Uuid::now_v7(), Uuid::new_v4());
        sqlx::query(
            "insert into orders (order_id, user_id, user_email, plan, amount_minor, currency, status) \
             values ($1, $2, $3, 'basic', 1900, 'USD', 'pending_payment') \
             on conflict (user_id) do nothing \
             returning order_id",
        )
        .bind(order_id)
        .bind(user_id)
        .bind(format!("ceiling-{user_id}@example.com"))
        .execute(&mut *tx)
        .await?;
        orders.push(order_id);
        caused.push(order_created(order_id, user_id));
    }
    outbox::enqueue_all(&mut tx, &caused).await?;
    tx.commit().await?;
    Ok(orders)
}

/// The payment service's order_created batch, with the service's own statements: the intents
/// recorded in one statement, a charge through the simulator (its own statement) for each, then
/// one transaction with the inbox rows, each outcome and the outbox rows.
async fn payment_tx(pool: &PgPool, orders: &[Uuid]) -> anyhow::Result<u64> {
    if orders.is_empty() {
        return Ok(0);
    }
    let intents: Vec<_> = orders
        .iter()
        .map(|&order_id| PaymentIntent {
            order_id,
            user_id: Uuid::new_v4(),
            amount_minor: 1900,
            currency: "USD".into(),
        })
        .collect();
    let payments = repository::record_intents(pool, &intents).await?;
    let gateway = SimulatedGateway::new(pool.clone(), Latency::NONE);
    let requests: Vec<_> = payments
        .iter()
        .map(|payment| ChargeRequest {
            idempotency_key: payment.order_id,
            order_id: payment.order_id,
            customer_email: "ceiling@example.com".into(),
            amount_minor: payment.amount_minor,
            currency: payment.currency.clone(),
        })
        .collect();
    let charges = requests.iter().map(|request| gateway.charge(request));
    for charged in futures_util::future::join_all(charges).await {
        charged?;
    }
    let mut tx = pool.begin().await?;
    inbox_rows(
        &mut tx,
        PAYMENT_SERVICE_ORDER_CREATED.consumer,
        orders.len(),
    )
    .await?;
    let mut caused = Vec::with_capacity(orders.len());
    for &order_id in orders {
        let payment = repository::record_outcome(&mut tx, order_id, &PaymentOutcome::Succeeded)
            .await?
            .context("the payment was processing")?;
        caused.push(Envelope::new(
            &wire::payment_processed(&payment),
            &context(),
        ));
    }
    outbox::enqueue_all(&mut tx, &caused).await?;
    tx.commit().await?;
    Ok(orders.len() as u64)
}

/// The order service's payment_processed batch: inbox rows, one settled order per message.
async fn settle_tx(pool: &PgPool, orders: &[Uuid]) -> anyhow::Result<u64> {
    if orders.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    inbox_rows(
        &mut tx,
        ORDER_SERVICE_PAYMENT_PROCESSED.consumer,
        orders.len(),
    )
    .await?;
    for &order_id in orders {
        sqlx::query(
            "update orders set status = 'paid', update_time = now() \
             where order_id = $1 and status = 'pending_payment' returning order_id",
        )
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(orders.len() as u64)
}

/// Persistent messages of the events' sizes through a durable queue: three publishers (one
/// relay per service) publishing batches with confirms, `workers` consumers acking each batch
/// with one `multiple` ack; then one message at a time, publish to delivery.
async fn broker(args: &CeilingArgs, span: Duration) -> anyhow::Result<Step> {
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
    let measured = broker_steps(args, &amqp, &queue, span).await;
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

/// Messages of the three events, in turn, with their AMQP properties.
fn messages() -> Vec<(Vec<u8>, BasicProperties)> {
    let (order_id, user_id) = (Uuid::now_v7(), Uuid::new_v4());
    [
        user_created(user_id),
        order_created(order_id, user_id),
        payment_processed(Uuid::now_v7(), order_id),
    ]
    .into_iter()
    .map(|envelope| {
        let properties = envelope.properties("loadgen");
        (envelope.payload, properties)
    })
    .collect()
}

async fn broker_steps(
    args: &CeilingArgs,
    amqp: &Connection,
    queue: &str,
    span: Duration,
) -> anyhow::Result<(f64, Duration)> {
    let messages = Arc::new(messages());
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
                let Some(Ok(mut last)) = first else { return };
                let mut n = 1;
                while n < batch {
                    match deliveries.next().now_or_never() {
                        Some(Some(Ok(delivery))) => {
                            last = delivery;
                            n += 1;
                        }
                        _ => break,
                    }
                }
                if last.ack(BasicAckOptions { multiple: n > 1 }).await.is_err() {
                    return;
                }
                consumed.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
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
