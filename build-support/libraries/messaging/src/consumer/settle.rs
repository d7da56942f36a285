//! Settling deliveries: acks, requeues and rejects (one `multiple` settlement per batch), each
//! bounded in time, through a handle that owns the delivery.

use std::future::Future;

use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
};

use super::SETTLE_TIMEOUT;

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
