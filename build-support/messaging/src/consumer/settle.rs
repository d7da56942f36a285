//! Settling deliveries: acks and requeues (one `multiple` settlement per batch), retries and
//! dead letters, each bounded in time.

use std::{future::Future, time::Duration};

use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
};

use super::{
    EventConsumer, Handler, HandlerError, SETTLE_TIMEOUT, UNAVAILABLE_PAUSE,
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
                tracing::error!(
                    error = format!("{error:#}"),
                    "cannot apply message; dead-lettering it"
                );
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
                        tracing::warn!(
                            error = format!("{error:#}"),
                            attempt,
                            ?delay,
                            "transient failure; retrying later"
                        );
                        self.retry_later(delivery, publisher, attempt, delay, &error)
                            .await;
                    }
                    None => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            attempt,
                            "transient failure, out of retries; dead-lettering it"
                        );
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
    pub(super) async fn dead_letter(
        &self,
        unsettled: Unsettled,
        publisher: &Publisher,
        kind: FailureKind,
        attempts: u32,
        error: &(dyn std::fmt::Display + Sync),
    ) {
        metrics::counter!("dead_letters_total", "consumer" => self.name, "kind" => kind.as_str())
            .increment(1);
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
}

/// A delivery not yet settled, owned: [`Unsettled::ack`], [`Unsettled::requeue`] and
/// [`Unsettled::reject`] consume it (as do the consumer's retry and dead-letter paths, which end
/// in one of them), so a delivery cannot be settled twice:
///
/// ```compile_fail
/// # async fn twice(delivery: messaging::consumer::Unsettled) {
/// delivery.ack().await;
/// delivery.requeue().await; // the delivery was moved by its ack
/// # }
/// ```
///
/// while settling it once does:
///
/// ```
/// # async fn once(delivery: messaging::consumer::Unsettled) {
/// delivery.ack().await;
/// # }
/// ```
///
/// Each settlement is bounded in time, and a failed one is logged, not returned: the channel is
/// gone, the broker redelivers the message, and the inbox makes that harmless.
#[derive(Debug)]
pub struct Unsettled(Delivery);

impl Unsettled {
    /// Takes charge of settling `delivery`.
    pub fn new(delivery: Delivery) -> Self {
        Self(delivery)
    }

    /// The delivery, to read.
    pub fn delivery(&self) -> &Delivery {
        &self.0
    }

    /// Done with: the broker forgets it.
    pub async fn ack(self) {
        settle(self.0.ack(BasicAckOptions::default())).await;
    }

    /// Back to the queue, for later.
    pub async fn requeue(self) {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        settle(self.0.nack(requeue)).await;
    }

    /// To the dead-letter queue, through the queue's dead-letter exchange (the broker adds
    /// `x-death`).
    pub async fn reject(self) {
        settle(self.0.reject(BasicRejectOptions { requeue: false })).await;
    }

    /// Acks every delivery of `batch` with one `multiple` ack of the last the broker sent, which
    /// also acks every earlier one still unsettled on the channel (there is none: a worker
    /// settles each batch before taking the next).
    pub async fn ack_all(batch: Vec<Self>) {
        let multiple = batch.len() > 1;
        if let Some(last) = Self::last(batch) {
            settle(last.0.ack(BasicAckOptions { multiple })).await;
        }
    }

    /// Returns every delivery of `batch` to the queue, like [`Unsettled::ack_all`].
    pub async fn requeue_all(batch: Vec<Self>) {
        let multiple = batch.len() > 1;
        if let Some(last) = Self::last(batch) {
            let requeue = BasicNackOptions {
                multiple,
                requeue: true,
            };
            settle(last.0.nack(requeue)).await;
        }
    }

    /// The delivery the broker sent last: settling it with `multiple` settles the batch.
    fn last(batch: Vec<Self>) -> Option<Self> {
        batch
            .into_iter()
            .max_by_key(|unsettled| unsettled.0.delivery_tag)
    }
}

/// The `events_consumed_total` outcome of a failure.
pub(super) fn failure_outcome(error: &HandlerError) -> &'static str {
    match error {
        HandlerError::Transient(_) => "retried",
        HandlerError::Permanent(_) => "dead_lettered",
        HandlerError::Unavailable(_) => "requeued",
    }
}

/// A failed ack or nack means the channel is gone (lapin then reports the delivery as not
/// settled): the broker redelivers the message, and the inbox makes that harmless.
async fn settle(outcome: impl Future<Output = Result<bool, lapin::Error>>) {
    match tokio::time::timeout(SETTLE_TIMEOUT, outcome).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::warn!(
            "the channel closed before the delivery was settled; the broker will redeliver it"
        ),
        Ok(Err(error)) => {
            tracing::warn!(%error, "could not settle the delivery; the broker will redeliver it")
        }
        Err(_) => tracing::warn!(
            "the broker did not take the settlement within {SETTLE_TIMEOUT:?}; it will redeliver"
        ),
    }
}

/// Closes a consumer's channel, waiting at most [`SETTLE_TIMEOUT`] (a stalled connection never
/// answers; the broker requeues the deliveries when it drops that connection).
pub(super) async fn close(channel: &Channel) {
    match tokio::time::timeout(
        SETTLE_TIMEOUT,
        channel.close(200, "consumer stopping".into()),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "closing the consumer channel"),
        Err(_) => tracing::debug!("the broker did not confirm closing the consumer channel"),
    }
}
