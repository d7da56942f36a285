//! A batch: deliveries applied in one transaction with their inbox and outbox rows, and split
//! when one of them fails, so that a failure is settled for the message that caused it alone.

use std::{collections::VecDeque, time::Duration};

use proto::Event;
use tracing::Instrument;

use super::{
    BatchFailure, BatchMessage, EventConsumer, Handler, HandlerError, Incoming,
    apply::{Outcome, apply_batch},
    hold::Hold,
    settle::Unsettled,
};
use crate::publisher::Publisher;

/// A decoded delivery on its way through a batch.
pub(super) struct Pending<E, P> {
    pub(super) delivery: Unsettled,
    pub(super) message: Incoming<E>,
    /// What the handler's first step found, once it ran.
    pub(super) prepared: P,
    /// Attempts before this delivery, from its headers.
    pub(super) attempts: u32,
    /// The message's span, a child of the producer's trace.
    pub(super) span: tracing::Span,
}

impl<E> Pending<E, ()> {
    pub(super) fn with_prepared<P>(self, prepared: P) -> Pending<E, P> {
        Pending {
            delivery: self.delivery,
            message: self.message,
            prepared,
            attempts: self.attempts,
            span: self.span,
        }
    }
}

/// A delivery of `H`'s batch with what its first step prepared.
pub(super) type Item<H> = Pending<<H as Handler>::Event, <H as Handler>::Prepared>;

impl<H: Handler> EventConsumer<H> {
    /// Applies a batch in one transaction and acks it after the commit. A message the handler
    /// failed on is settled alone (retried, dead-lettered), and the rest applied again without
    /// it; a batch that failed as a whole is applied again one message at a time, to find the
    /// message at fault; while a dependency is unavailable, what is left is held (see
    /// [`Hold`]). Every delivery on the worker's channel before this batch is settled
    /// already, so the batch is acked with one `multiple` ack.
    pub(super) async fn apply_and_settle(
        &self,
        batch: Vec<Item<H>>,
        publisher: &Publisher,
        hold: &mut Hold,
    ) {
        let mut queue = VecDeque::from([batch]);
        while let Some(mut batch) = queue.pop_front() {
            if batch.is_empty() {
                continue;
            }
            let started = std::time::Instant::now();
            let applied = self.apply(&batch).await;
            let took = started.elapsed();
            match applied {
                Ok(outcomes) => {
                    for (pending, outcome) in batch.iter().zip(outcomes) {
                        self.observe(&pending.message, took, Ok(outcome));
                        if outcome == Outcome::Duplicate {
                            pending.span.in_scope(|| {
                                tracing::debug!("duplicate message; acknowledged without effect");
                            });
                        }
                    }
                    Unsettled::ack_all(batch.into_iter().map(|pending| pending.delivery).collect())
                        .await;
                }
                Err(BatchFailure {
                    error: HandlerError::Unavailable(error),
                    ..
                }) => {
                    // Everything not yet settled is tried again after a pause, or, once the
                    // hold is over, goes back to the queue.
                    let rest: Vec<_> = queue.drain(..).flatten().chain(batch).collect();
                    if self.hold_on(hold, rest.len(), &error).await {
                        queue.push_back(rest);
                    } else {
                        self.requeue_unavailable(rest, took, &error).await;
                    }
                }
                Err(BatchFailure {
                    at: Some(at),
                    error,
                }) => {
                    let failed = batch.remove(at);
                    self.observe(&failed.message, took, Err(error.outcome()));
                    let span = failed.span.clone();
                    self.settle_failure(failed, error, publisher)
                        .instrument(span)
                        .await;
                    queue.push_front(batch);
                }
                Err(BatchFailure { at: None, error }) if batch.len() > 1 => {
                    tracing::debug!(
                        consumer = self.name,
                        batch = batch.len(),
                        error = format!("{error:#}"),
                        "batch failed; applying its messages one at a time"
                    );
                    queue.extend(batch.into_iter().map(|pending| vec![pending]));
                }
                Err(BatchFailure { at: None, error }) => {
                    if let Some(failed) = batch.pop() {
                        self.observe(&failed.message, took, Err(error.outcome()));
                        let span = failed.span.clone();
                        self.settle_failure(failed, error, publisher)
                            .instrument(span)
                            .await;
                    }
                }
            }
        }
    }

    /// Records what became of a message: its outcome, how long applying its batch took and,
    /// once applied, how old the event was (from its time-ordered UUIDv7 id,
    /// millisecond-precise).
    pub(super) fn observe(
        &self,
        message: &Incoming<H::Event>,
        took: Duration,
        outcome: Result<Outcome, &'static str>,
    ) {
        if outcome.is_ok() {
            self.processed.add(1);
        }
        let label = match outcome {
            Ok(Outcome::Applied) => "applied",
            Ok(Outcome::Duplicate) => "duplicate",
            Err(label) => label,
        };
        let (consumer, kind) = (self.name, H::Event::TYPE_NAME);
        metrics::counter!("events_consumed_total", "consumer" => consumer, "type" => kind, "outcome" => label)
            .increment(1);
        metrics::histogram!("event_handler_duration_seconds", "consumer" => consumer, "type" => kind)
            .record(took.as_secs_f64());
        if outcome == Ok(Outcome::Applied)
            && let Some(age) = crate::envelope::minted_ago(message.message_id)
        {
            metrics::histogram!("event_end_to_end_age_seconds", "consumer" => consumer, "type" => kind)
                .record(age.as_secs_f64());
        }
    }

    /// Applies the batch in one transaction (see [`apply_batch`]), each handler call in its
    /// message's span.
    pub(super) async fn apply(&self, batch: &[Item<H>]) -> Result<Vec<Outcome>, BatchFailure> {
        let messages: Vec<_> = batch
            .iter()
            .map(|pending| BatchMessage {
                message: &pending.message,
                prepared: &pending.prepared,
                span: pending.span.clone(),
            })
            .collect();
        apply_batch(
            &self.pool,
            self.name,
            &*self.handler,
            &messages,
            self.dispatcher.as_ref(),
        )
        .await
    }
}
