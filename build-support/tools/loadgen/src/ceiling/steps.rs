//! The Postgres steps of the ceiling: the services' own transactions, fed with the events the
//! step before wrote.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use lapin::message::Delivery;
use messaging::{
    Dispatcher, Envelope, EventContext, Handler, Incoming, TraceParent,
    consumer::{BatchMessage, Outcome, apply_batch, decode},
    outbox,
    topology::Consumes,
};
use proto::{Event, user::v1::UserCreated};
use sqlx::PgPool;
use user_service::{
    domain::{NewUser, Plan, User},
    repository::CreateRequest,
};
use uuid::Uuid;

use super::{CeilingArgs, Sampling, Step, at_full_load, one_at_a_time};

/// A consumer step fed with what the step before it wrote to the outbox (taken out of it): at
/// full load, less the messages kept back for the samples one at a time. The first event it
/// reads joins `events`.
pub(super) async fn consumer_step<H: Handler>(
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
            .drain(..Sampling::new(args).units().min(input.len()))
            .collect::<Vec<_>>(),
    ));
    let input = Mutex::new(input);
    let batch = args.batch.max(1);
    let throughput = at_full_load(args.workers, Duration::from_secs(args.seconds), |_| {
        let messages = take(&input, batch);
        async move { consume(pool, consumer, handler, messages).await }
    })
    .await?;
    let latency = one_at_a_time(args, || async {
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

pub(super) fn context() -> EventContext {
    EventContext {
        correlation_id: Uuid::new_v4().to_string(),
        causation_id: Uuid::now_v7().to_string(),
        traceparent: TraceParent::new_root(),
    }
}

/// The `user_created` of a new user, as the user service announces it.
pub(super) fn user_created() -> Envelope {
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
pub(super) fn new_users(n: usize) -> anyhow::Result<Vec<Incoming<UserCreated>>> {
    (0..n).map(|_| incoming(&user_created())).collect()
}

/// An envelope through the consumer's decoding, as if the broker had delivered it.
pub(super) fn incoming<E: Event>(envelope: &Envelope) -> anyhow::Result<Incoming<E>> {
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
pub(super) fn take<T>(from: &Mutex<VecDeque<T>>, n: usize) -> Vec<T> {
    let mut from = from.lock().expect("not poisoned");
    let n = n.min(from.len());
    from.drain(..n).collect()
}

/// How the services write their events: leased to a dispatcher, through the same statement,
/// but due at once here, since no relay publishes them and the next step takes them out.
pub(super) fn dispatcher() -> Dispatcher {
    Dispatcher::without_relay("loadgen", Duration::ZERO)
}

/// CreateUser's transaction for `calls` calls that arrived together, by the user service's
/// repository, as its writer commits them (a call that arrives alone is a batch of one): the
/// users and their outbox rows. How many users it created.
pub(super) async fn create_users(pool: &PgPool, calls: usize) -> anyhow::Result<u64> {
    let calls = (0..calls.max(1))
        .map(|_| {
            let request_id = Uuid::new_v4();
            let new_user = NewUser::parse(
                &format!("ceiling-{request_id}@example.com"),
                "Ceiling Test",
                Plan::Basic,
                &request_id.to_string(),
            )
            .map_err(|violations| anyhow::anyhow!("invalid user: {violations:?}"))?;
            Ok(CreateRequest {
                new_user,
                context: context(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let created = user_service::repository::create_batch(pool, &calls, Some(&dispatcher())).await?;
    for outcome in &created.outcomes {
        if let Err(error) = outcome {
            anyhow::bail!("CreateUser failed: {error}");
        }
    }
    Ok(created.outcomes.len() as u64)
}

/// Puts `rows` outbox rows in place, in chunks; their ids.
pub(super) async fn fill_outbox(pool: &PgPool, rows: usize) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(rows);
    let mut left = rows;
    while left > 0 {
        let chunk: Vec<Envelope> = (0..left.min(1000)).map(|_| user_created()).collect();
        left -= chunk.len();
        ids.extend(chunk.iter().map(|row| row.message_id));
        let mut connection = pool.acquire().await?;
        outbox::enqueue_all(&mut connection, &chunk).await?;
    }
    Ok(ids)
}

/// What a dispatch does in the database once the broker confirmed its rows: delete them.
pub(super) async fn remove_published(pool: &PgPool, ids: Vec<Uuid>) -> anyhow::Result<u64> {
    let removed = outbox::remove_published(pool, &ids).await?;
    anyhow::ensure!(
        removed == ids.len(),
        "published rows missing from the outbox"
    );
    Ok(removed as u64)
}

/// A relay's claim (the recovery path), without the publish: claim due rows, remove them.
/// Returns them; takes the rows one step wrote to the next.
pub(super) async fn relay_pass(pool: &PgPool, batch: usize) -> anyhow::Result<Vec<Envelope>> {
    let mut tx = pool.begin().await?;
    let claimed = outbox::claim_due(&mut tx, batch).await?;
    let ids: Vec<Uuid> = claimed.iter().map(|row| row.message_id).collect();
    outbox::remove(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Everything in the outbox, taken out of it.
pub(super) async fn drain(pool: &PgPool) -> anyhow::Result<Vec<Envelope>> {
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
pub(super) async fn consume<H: Handler>(
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
    let outcomes = apply_batch(
        pool,
        consumer.consumer,
        handler,
        &batch,
        Some(&dispatcher()),
    )
    .await?;
    anyhow::ensure!(
        outcomes.iter().all(|outcome| *outcome == Outcome::Applied),
        "a message of the batch was a duplicate"
    );
    Ok(outcomes.len() as u64)
}
