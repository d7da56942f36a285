//! One run against the stack: `CreateUser` calls, closed loop (a number of callers, each
//! sending its next call when its last returns) or open loop (calls started at a fixed rate,
//! each at its slot, however many are still in flight), while `payment_processed` is watched on
//! a private queue; then the drain of the flows still under way and the run's report.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use messaging::{Namespace, Topology};
use prost::Message;
use proto::{
    Event,
    payment::v1::PaymentProcessed,
    user::v1::{CreateUserRequest, Plan as UserPlan, user_service_client::UserServiceClient},
};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::{
    StackArgs,
    plan::{Extent, Observations, Pace, Plan},
    progress,
    refusal::Refusal,
    report::Report,
};

/// Runs `plan` against the stack and reports it, once every accepted flow completed or the
/// drain timed out.
pub(crate) async fn run(stack: &StackArgs, plan: &Plan) -> anyhow::Result<Report> {
    let topology = Topology::new(Namespace::parse(&stack.bus_namespace)?);
    let observations = Arc::new(Mutex::new(Observations::default()));

    // Watch payment_processed on a private queue before creating anyone.
    let amqp = stack.broker.connect().await?;
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
                    lock(&observations)
                        .completed
                        .entry(event.user_id)
                        .or_default()
                        .push(arrived);
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        })
    };

    let mut instances = Vec::new();
    for addr in stack
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

    let calls = Calls {
        instances,
        run: Arc::from(uuid::Uuid::new_v4().simple().to_string()),
        observations: observations.clone(),
        started: Instant::now(),
    };
    let (limit, deadline) = match plan.extent {
        Extent::Users(users) => (users, None),
        Extent::Seconds(seconds) => (u64::MAX, Some(calls.started + Duration::from_secs(seconds))),
    };
    let bar = progress::bar(plan.extent, &plan.label);
    let shown = progress::follow(
        bar.clone(),
        observations.clone(),
        calls.started,
        plan.extent,
    );
    let driven = async {
        match plan.pace {
            Pace::Closed { concurrency } => calls.closed_loop(concurrency, limit, deadline).await,
            Pace::Open { rate } => calls.open_loop(rate, limit, deadline).await,
        }
    };
    tokio::select! {
        _ = driven => {}
        _ = shown => {}
    }
    bar.finish_and_clear();
    let created_in = calls.started.elapsed();

    // Drain: wait until every accepted user completed, or the timeout.
    let drain_deadline = Instant::now() + Duration::from_secs(stack.drain_timeout);
    loop {
        let done = {
            let observations = lock(&observations);
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

    let observations = lock(&observations);
    Ok(Report::new(
        &observations,
        calls.started,
        created_in,
        plan.pace,
    ))
}

fn lock(observations: &Mutex<Observations>) -> std::sync::MutexGuard<'_, Observations> {
    observations.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every call of a run shares.
struct Calls {
    instances: Vec<UserServiceClient<Channel>>,
    /// Makes this run's e-mail addresses unique.
    run: Arc<str>,
    observations: Arc<Mutex<Observations>>,
    started: Instant,
}

impl Calls {
    /// `concurrency` callers take the next call's number until `limit` or the deadline.
    async fn closed_loop(&self, concurrency: usize, limit: u64, deadline: Option<Instant>) {
        let next = AtomicU64::new(0);
        let callers = (0..concurrency).map(|caller| {
            let (users, next) = (&self.instances[caller % self.instances.len()], &next);
            async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
                        return;
                    }
                    // A saturated service said when to call again: this caller waits that long
                    // (never past the run's end), as a well-behaved client would.
                    if let Some(delay) = self.call_on(users.clone(), i).await {
                        let until = Instant::now() + delay;
                        tokio::time::sleep_until(deadline.map_or(until, |d| until.min(d)).into())
                            .await;
                    }
                }
            }
        });
        futures_util::future::join_all(callers).await;
    }

    /// Call `i` is spawned at its slot, `i / rate` seconds into the run (at once when the
    /// scheduler is behind), until `limit` or the deadline; then the calls in flight finish.
    /// A refusal's `RetryInfo` delays nothing: each call stands for a client of its own.
    async fn open_loop(&self, rate: f64, limit: u64, deadline: Option<Instant>) {
        let mut in_flight = JoinSet::new();
        for i in 0..limit {
            let slot = self.started + Duration::from_secs_f64(i as f64 / rate);
            if deadline.is_some_and(|d| slot >= d) {
                break;
            }
            tokio::time::sleep_until(slot.into()).await;
            in_flight.spawn(self.call(i));
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// Call `i` on the instance whose turn it is, as a future of its own.
    fn call(&self, i: u64) -> impl Future<Output = Option<Duration>> + Send + 'static {
        let users = self.instances[i as usize % self.instances.len()].clone();
        self.call_on(users, i)
    }

    /// Makes call `i` and records its outcome; returns the delay a refusal asked for.
    fn call_on(
        &self,
        mut users: UserServiceClient<Channel>,
        i: u64,
    ) -> impl Future<Output = Option<Duration>> + Send + 'static {
        let (run, observations) = (self.run.clone(), self.observations.clone());
        async move {
            {
                let mut observations = lock(&observations);
                observations.in_flight += 1;
                observations.in_flight_max = observations.in_flight_max.max(observations.in_flight);
            }
            let sent = Instant::now();
            let outcome = users
                .create_user(CreateUserRequest {
                    email: format!("loadgen-{run}-{i}@example.com"),
                    name: format!("Load {i}"),
                    plan: UserPlan::Basic.into(),
                    request_id: uuid::Uuid::new_v4().to_string(),
                })
                .await;
            let mut observations = lock(&observations);
            observations.in_flight -= 1;
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
        }
    }
}
