//! What becomes of a message that failed: retried later through a retry queue, dead-lettered
//! with headers saying why, or requeued while a dependency is unavailable.

use std::time::Duration;

use super::{
    EventConsumer, Handler, HandlerError, UNAVAILABLE_PAUSE, Unsettled,
    batch::{Item, Pending},
};
use crate::{
    publisher::Publisher,
    retry::{Failure, FailureKind, RetryPolicy},
};

impl<H: Handler> EventConsumer<H> {
    /// Everything not yet settled goes back to the queue, after a pause, because a dependency
    /// is unavailable.
    pub(super) async fn requeue_unavailable<P>(
        &self,
        rest: Vec<Pending<H::Event, P>>,
        took: Duration,
        error: &anyhow::Error,
    ) {
        tracing::warn!(
            consumer = self.name,
            batch = rest.len(),
            error = format!("{error:#}"),
            "dependency unavailable; requeueing"
        );
        for pending in &rest {
            self.observe(&pending.message, took, Err("requeued"));
        }
        tokio::time::sleep(UNAVAILABLE_PAUSE).await;
        Unsettled::requeue_all(rest.into_iter().map(|pending| pending.delivery).collect()).await;
    }

    /// Retries a failed message later, dead-letters it, or requeues it, as its failure says.
    pub(super) async fn settle_failure(
        &self,
        failed: Item<H>,
        error: HandlerError,
        publisher: &Publisher,
    ) {
        let Pending {
            delivery, attempts, ..
        } = failed;
        match error {
            HandlerError::Permanent(error) => {
                self.dead_letter(
                    delivery,
                    publisher,
                    FailureKind::Permanent,
                    attempts.saturating_add(1),
                    &error,
                )
                .await;
            }
            HandlerError::Transient(error) => {
                let attempt = attempts.saturating_add(1);
                match self.bus.topology().retry().delay(attempt) {
                    Some(delay) => {
                        // The one line of a retried attempt: it needs nobody, unless they add up.
                        tracing::warn!(
                            attempt,
                            ?delay,
                            error = format!("{error:#}"),
                            "transient failure; retrying later"
                        );
                        self.activity.retried();
                        self.retry_later(delivery, publisher, attempt, delay, &error)
                            .await;
                    }
                    None => {
                        self.dead_letter(
                            delivery,
                            publisher,
                            FailureKind::RetriesExhausted,
                            attempt,
                            &error,
                        )
                        .await;
                    }
                }
            }
            HandlerError::Unavailable(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "dependency unavailable; requeueing"
                );
                tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                delivery.requeue().await;
            }
        }
    }

    /// Re-publishes to the retry queue for `delay`, then acks; requeues if that fails.
    pub(super) async fn retry_later(
        &self,
        unsettled: Unsettled,
        publisher: &Publisher,
        attempt: u32,
        delay: Duration,
        error: &(dyn std::fmt::Display + Sync),
    ) {
        let failure = Failure {
            consumer: self.name,
            attempts: attempt,
            kind: None,
            message: error.to_string(),
            at: chrono::Utc::now(),
        };
        let topology = self.bus.topology();
        let queue = RetryPolicy::retry_queue(&topology.queue(&self.subscription), delay);
        let delivery = unsettled.delivery();
        match publisher
            .forward(
                &topology.dead_letter_exchange(),
                &queue,
                &delivery.data,
                failure.annotate(delivery),
            )
            .await
        {
            Ok(()) => unsettled.ack().await,
            Err(error) => {
                tracing::warn!(%error, "cannot schedule the retry; requeueing");
                tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                unsettled.requeue().await;
            }
        }
    }

    /// Re-publishes to the dead-letter queue with the failure headers, then acks. If that fails,
    /// rejects it, which the queue dead-letters without the headers: never back to the queue.
    /// Every dead letter is logged here, once, at ERROR: someone has to look at it.
    pub(super) async fn dead_letter(
        &self,
        unsettled: Unsettled,
        publisher: &Publisher,
        kind: FailureKind,
        attempts: u32,
        error: &(dyn std::fmt::Display + Sync),
    ) {
        tracing::error!(
            consumer = self.name,
            queue = self.subscription.queue,
            kind = kind.as_str(),
            attempts,
            error = %error,
            "message dead-lettered (eventsctl dlq list)"
        );
        self.count_dead_letter(kind);
        let failure = Failure {
            consumer: self.name,
            attempts,
            kind: Some(kind),
            message: error.to_string(),
            at: chrono::Utc::now(),
        };
        let topology = self.bus.topology();
        let delivery = unsettled.delivery();
        match publisher
            .forward(
                &topology.dead_letter_exchange(),
                &topology.queue(&self.subscription),
                &delivery.data,
                failure.annotate(delivery),
            )
            .await
        {
            Ok(()) => unsettled.ack().await,
            Err(error) => {
                tracing::warn!(%error, "cannot annotate the dead letter; rejecting it instead");
                unsettled.reject().await;
            }
        }
    }

    /// Counts a dead letter of `kind` in the metrics and the service's summary.
    pub(super) fn count_dead_letter(&self, kind: FailureKind) {
        metrics::counter!("dead_letters_total", "consumer" => self.name, "kind" => kind.as_str())
            .increment(1);
        self.activity.dead_lettered();
    }
}
