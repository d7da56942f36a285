//! Publishing events with publisher confirms and `mandatory`.
//!
//! A message counts as delivered only when the broker acked it and did not return it: a
//! returned (unroutable) message, a nack, a channel error or a confirm that never comes are
//! all failures the caller must retry.
//!
//! Every message carries the AMQP `user_id` of the broker user the publisher logged in as, which
//! RabbitMQ checks against the connection's: consumers know who produced it (see
//! [`crate::trust`]).

use std::time::Duration;

use futures_util::future::join_all;
use lapin::{
    Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};

use crate::envelope::Envelope;

/// How long to wait for the broker's confirms of one batch.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no queue is bound to routing key {routing_key:?}: the broker returned the message")]
    Unroutable { routing_key: String },
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no confirm from the broker within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Publishes to the events exchange on its own channel in confirm mode.
#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Channel,
    exchange: String,
    app_id: String,
    user_id: String,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode. `user_id` must be the broker
    /// user `connection` logged in as (the broker refuses any other).
    pub async fn open(
        connection: &Connection,
        exchange: String,
        app_id: String,
        user_id: String,
    ) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            exchange,
            app_id,
            user_id,
        })
    }

    /// Whether the channel is still open.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Re-publishes a message as it is (payload and properties) to any exchange, and waits for its
    /// confirm. For retries, dead letters and replays. A message without a `user_id` gets this
    /// publisher's.
    pub async fn forward(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: lapin::BasicProperties,
    ) -> Result<(), PublishError> {
        let properties = match properties.user_id() {
            Some(_) => properties,
            None => properties.with_user_id(self.user_id.as_str().into()),
        };
        // Bounded as a whole: sending can wait too (a blocked or dying connection).
        let published = async {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    payload,
                    properties,
                )
                .await?;
            confirm.await
        };
        match tokio::time::timeout(CONFIRM_TIMEOUT, published).await {
            Ok(confirmation) => check(confirmation?, routing_key),
            Err(_) => Err(PublishError::ConfirmTimeout(CONFIRM_TIMEOUT)),
        }
    }

    /// Publishes one event and waits for its confirm.
    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        self.publish_batch(std::slice::from_ref(envelope))
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Publishes every event, then awaits all their confirms concurrently. The result at index
    /// `i` is the outcome of `envelopes[i]`.
    #[tracing::instrument(skip_all, fields(batch = envelopes.len()))]
    pub async fn publish_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let mut pending = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let sent = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    envelope.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &envelope.payload,
                    envelope
                        .properties(&self.app_id)
                        .with_user_id(self.user_id.as_str().into()),
                )
                .await;
            pending.push(async move {
                let confirmation = sent?.await?;
                check(confirmation, &envelope.routing_key)
            });
        }
        match tokio::time::timeout(CONFIRM_TIMEOUT, join_all(pending)).await {
            Ok(outcomes) => outcomes,
            Err(_) => envelopes
                .iter()
                .map(|_| Err(PublishError::ConfirmTimeout(CONFIRM_TIMEOUT)))
                .collect(),
        }
    }
}

fn check(confirmation: Confirmation, routing_key: &str) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(PublishError::Unroutable {
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Nack(None) => Err(PublishError::Nacked),
        // The channel is always in confirm mode; an unconfirmed publish is not a delivery.
        Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}
