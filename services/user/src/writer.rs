//! The CreateUser writer: group commit. One task writes every CreateUser call of the instance;
//! the calls that arrive while it writes share its next transaction.
//!
//! A gRPC call hands its request to the [`Writer`] and waits for its own answer. The task takes
//! the first request, then whatever else is already queued (up to the batch limit) without
//! waiting for more, and writes them with [`repository::create_batch`]: an idle service commits
//! each call at once, a busy one many calls per transaction.
//!
//! Each call comes with its [`Slot`] among the flows in flight. The task settles it with the
//! call's outcome, before answering: the new user's flow is tracked if the call created one,
//! and the slot released otherwise. So is a call whose caller went away: its user is created
//! all the same, and counted.

use std::{future::Future, sync::Arc};

use messaging::{
    Dispatcher, EventContext,
    db_errors::{self, DbErrorClass},
};
use service_kit::repository::RepositoryError;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::{
    domain::NewUser,
    flows::Slot,
    repository::{self, CreateRequest, CreateUserError, CreatedBatch, Registered},
};

/// One call's answer.
type Outcome = Result<Registered, CreateUserError>;

/// Hands CreateUser calls to the writer task. Clones share the task.
#[derive(Debug, Clone)]
pub struct Writer {
    requests: mpsc::Sender<Request>,
}

/// Where committed events go: to the process's relay at once, or (`None`) to any relay's claim.
type Dispatch = Option<Dispatcher>;

/// A call waiting for the writer.
struct Request {
    call: CreateRequest,
    /// Its place among the flows in flight, settled by its outcome.
    slot: Slot,
    answer: oneshot::Sender<Outcome>,
    /// The caller's span, which the batch's span follows from.
    span: tracing::Span,
}

impl Writer {
    /// A writer of up to `batch_max` calls per transaction, and its task, to run as background
    /// work. The task ends once every clone of the writer is dropped (the gRPC server has
    /// drained) and every call they handed it is answered.
    /// With a `dispatcher`, each batch's events go to it once committed.
    pub fn new(
        pool: PgPool,
        batch_max: usize,
        dispatcher: Dispatch,
    ) -> (Self, impl Future<Output = ()> + Send) {
        let batch_max = batch_max.max(1);
        // Room for the next batch while one is written; beyond it, callers wait to hand theirs.
        let (requests, queued) = mpsc::channel(batch_max);
        (Self { requests }, run(pool, queued, batch_max, dispatcher))
    }

    /// Creates the user in the writer's next transaction: [`repository::create_batch`]'s answer
    /// for this call. `slot` tracks the new user's flow if the call creates one, and is released
    /// otherwise. A caller that goes away meanwhile does not take its call back: once handed
    /// over, the user is created (and its flow tracked).
    pub async fn create(&self, new_user: NewUser, context: EventContext, slot: Slot) -> Outcome {
        let (answer, answered) = oneshot::channel();
        let request = Request {
            call: CreateRequest { new_user, context },
            slot,
            answer,
            span: tracing::Span::current(),
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| CreateUserError::Stopped)?;
        answered.await.map_err(|_| CreateUserError::Stopped)?
    }
}

/// The writer task: one batch after the other until no caller is left.
async fn run(
    pool: PgPool,
    mut queued: mpsc::Receiver<Request>,
    batch_max: usize,
    dispatcher: Dispatch,
) {
    let mut requests = Vec::with_capacity(batch_max);
    while queued.recv_many(&mut requests, batch_max).await > 0 {
        metrics::histogram!("create_user_batch_size").record(requests.len() as f64);
        let span = tracing::info_span!("create_user_batch", calls = requests.len());
        let (calls, answers): (Vec<_>, Vec<_>) = requests
            .drain(..)
            .map(|request| {
                span.follows_from(&request.span);
                (request.call, (request.slot, request.answer))
            })
            .unzip();
        let outcomes = write(&pool, &calls, dispatcher.as_ref())
            .instrument(span)
            .await;
        for ((slot, answer), outcome) in answers.into_iter().zip(outcomes) {
            // Tracked just after the commit: the flow's end is three broker hops away.
            match &outcome {
                Ok(Registered::Created(user)) => slot.track(user.user_id),
                _ => drop(slot),
            }
            // A caller whose call was cancelled has dropped its end; its user stays created.
            let _ = answer.send(outcome);
        }
    }
}

/// Writes `calls` in one transaction and returns each call's answer, in order. If that
/// transaction fails for another reason than an unavailable database (a deadlock with another
/// instance's batch, a row the database refuses), each call is written alone, in a transaction
/// of its own, so that only a call that cannot be written fails. If the database is
/// unavailable, every call gets that error.
pub async fn write(
    pool: &PgPool,
    calls: &[CreateRequest],
    dispatcher: Option<&Dispatcher>,
) -> Vec<Outcome> {
    let error = match repository::create_batch(pool, calls, dispatcher).await {
        Ok(batch) => return committed(batch, dispatcher),
        Err(error) => error,
    };
    match error {
        RepositoryError::Database(error)
            if db_errors::classify(&error) == DbErrorClass::Unavailable =>
        {
            let error = Arc::new(error);
            calls
                .iter()
                .map(|_| Err(CreateUserError::Unavailable(Arc::clone(&error))))
                .collect()
        }
        error if calls.len() == 1 => vec![Err(error.into())],
        error => {
            tracing::warn!(
                error = format!("{error:#}"),
                calls = calls.len(),
                "a batch of CreateUser calls failed; writing each alone"
            );
            let mut outcomes = Vec::with_capacity(calls.len());
            for call in calls {
                outcomes.extend(
                    match repository::create_batch(pool, std::slice::from_ref(call), dispatcher)
                        .await
                    {
                        Ok(batch) => committed(batch, dispatcher),
                        Err(error) => vec![Err(error.into())],
                    },
                );
            }
            outcomes
        }
    }
}

/// Where every committed batch ends up: its events go to the dispatcher (or wait in the outbox
/// for a relay), its answers back to the callers.
fn committed(batch: CreatedBatch, dispatcher: Option<&Dispatcher>) -> Vec<Outcome> {
    if let Some(dispatcher) = dispatcher {
        dispatcher.dispatch(batch.events);
    }
    batch.outcomes
}
