//! Batches of events applied the way a consumer applies them, without a broker: for tests of
//! what each message of one batch comes to.

use std::collections::VecDeque;

use lapin::message::Delivery;
use messaging::{
    Envelope, Handler, HandlerError, Incoming,
    consumer::{BatchFailure, BatchMessage, Outcome, apply_batch, decode},
    topology::Consumes,
};
use proto::Event;
use sqlx::PgPool;

/// What became of one message of a batch, named as the consumer counts it
/// (`events_consumed_total`'s outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Applied,
    Duplicate,
    Retried,
    DeadLettered,
    Requeued,
}

impl Settled {
    fn failed(error: &HandlerError) -> Self {
        match error {
            HandlerError::Transient(_) => Self::Retried,
            HandlerError::Permanent(_) => Self::DeadLettered,
            HandlerError::Unavailable(_) => Self::Requeued,
        }
    }
}

/// `envelope` as a consumer decodes it once the broker delivered it.
pub fn delivered<E: Event>(envelope: &Envelope) -> Incoming<E> {
    let mut delivery = Delivery::mock(
        1,
        "".into(),
        envelope.routing_key.as_str().into(),
        false,
        envelope.payload.clone(),
    );
    delivery.properties = envelope.properties("test");
    decode(&delivery).expect("the envelope decodes")
}

/// Applies `messages` (with what the handler's first step prepared for each) as one batch of
/// `consumer`'s, the way the consumer does: in one transaction through `apply_batch`; the
/// message a failure names is settled alone and the rest applied again; a batch that failed as
/// a whole is applied again one message at a time. Returns what became of each message, in the
/// order given (nothing is acked, retried or dead-lettered: there is no broker).
pub async fn apply_as_consumer<H: Handler>(
    pool: &PgPool,
    consumer: Consumes<H::Event>,
    handler: &H,
    messages: &[Incoming<H::Event>],
    prepared: &[H::Prepared],
) -> Vec<Settled> {
    assert_eq!(
        messages.len(),
        prepared.len(),
        "one prepared value a message"
    );
    let mut settled = vec![None; messages.len()];
    let mut queue = VecDeque::from([(0..messages.len()).collect::<Vec<_>>()]);
    while let Some(mut batch) = queue.pop_front() {
        if batch.is_empty() {
            continue;
        }
        let items: Vec<_> = batch
            .iter()
            .map(|&i| BatchMessage {
                message: &messages[i],
                prepared: &prepared[i],
                span: tracing::Span::none(),
            })
            .collect();
        match apply_batch(pool, consumer.consumer, handler, &items, None).await {
            Ok(outcomes) => {
                assert_eq!(outcomes.len(), batch.len(), "an outcome a message");
                for (i, outcome) in batch.into_iter().zip(outcomes) {
                    settled[i] = Some(match outcome {
                        Outcome::Applied => Settled::Applied,
                        Outcome::Duplicate => Settled::Duplicate,
                    });
                }
            }
            Err(BatchFailure {
                error: error @ HandlerError::Unavailable(_),
                ..
            }) => {
                for i in queue.drain(..).flatten().chain(batch) {
                    settled[i] = Some(Settled::failed(&error));
                }
            }
            Err(BatchFailure {
                at: Some(at),
                error,
            }) => {
                let failed = batch.remove(at);
                settled[failed] = Some(Settled::failed(&error));
                queue.push_front(batch);
            }
            Err(BatchFailure { at: None, .. }) if batch.len() > 1 => {
                queue.extend(batch.into_iter().map(|i| vec![i]));
            }
            Err(BatchFailure { at: None, error }) => {
                settled[batch[0]] = Some(Settled::failed(&error));
            }
        }
    }
    settled
        .into_iter()
        .map(|settled| settled.expect("every message is settled"))
        .collect()
}
