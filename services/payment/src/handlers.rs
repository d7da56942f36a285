//! `order_created` → one charge through the payment gateway, and `payment_processed` through the
//! outbox.
//!
//! The charge is a recorded, resumable step, made the way payment systems use idempotency keys:
//!
//! 1. outside the consumer's transaction, one statement records the intent of every order of the
//!    batch that has no payment yet (`processing`) and commits;
//! 2. the gateway is called for every payment still processing, concurrently (bounded) and
//!    outside any transaction, with the order id as its idempotency key;
//! 3. the consumer's transaction records the outcomes of the batch in one statement, with their
//!    `payment_processed` outbox rows (and the inbox rows), and commits.
//!
//! A crash or a redelivery at any point resumes from what was recorded: a payment still
//! processing is asked of the gateway again under the same key (which answers with the first
//! outcome, never a second charge), and a payment with a recorded outcome is never charged
//! again. A batch applied again after another of its messages failed reuses the gateway's
//! answers; it does not call the gateway.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use messaging::{
    Envelope, Handler, HandlerError, Incoming,
    consumer::{BatchFailure, BatchMessage, handle_alone, parse_id},
};
use proto::order::v1::OrderCreated;
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    domain::{Payment, PaymentIntent, PaymentOutcome, PaymentStatus},
    gateway::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway},
    repository, wire,
};

/// How the service calls its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeSettings {
    /// Longest wait for one answer; past it the charge is retried later under the same key.
    pub timeout: Duration,
    /// Charges of one batch in flight at once.
    pub concurrency: usize,
}

impl Default for ChargeSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            concurrency: 32,
        }
    }
}

/// What the first step found out for one `order_created`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Charge {
    /// Nothing to do: the payment's outcome was recorded before.
    #[default]
    Recorded,
    /// The gateway answered for the order; the outcome is to be recorded (by the first message
    /// of the batch for the order that commits: every later one has the same answer).
    Answered {
        order_id: Uuid,
        outcome: PaymentOutcome,
    },
}

/// Charges each order once.
#[derive(Debug)]
pub struct OrderCreatedHandler<G> {
    gateway: Arc<G>,
    settings: ChargeSettings,
}

impl<G> OrderCreatedHandler<G> {
    pub fn new(gateway: Arc<G>, settings: ChargeSettings) -> Self {
        Self { gateway, settings }
    }
}

impl<G: PaymentGateway> OrderCreatedHandler<G> {
    /// The gateway's answer for a processing payment, within the timeout. A failure is logged
    /// once, by the consumer that settles it (a retry's WARN, a dead letter's ERROR).
    #[tracing::instrument(skip_all, fields(order_id = %payment.order_id))]
    async fn charge(&self, payment: &Payment, email: &str) -> Result<Charge, HandlerError> {
        let request = ChargeRequest {
            idempotency_key: payment.order_id,
            order_id: payment.order_id,
            customer_email: email.to_owned(),
            amount_minor: payment.amount_minor,
            currency: payment.currency.clone(),
        };
        let answer = tokio::time::timeout(self.settings.timeout, self.gateway.charge(&request))
            .await
            .unwrap_or_else(|_| {
                Err(GatewayError::Transient(format!(
                    "no answer within {:?}",
                    self.settings.timeout
                )))
            });
        let outcome = match answer {
            Ok(ChargeOutcome::Succeeded) => PaymentOutcome::Succeeded,
            Ok(ChargeOutcome::Declined { reason }) => PaymentOutcome::Declined { reason },
            Err(error @ GatewayError::Transient(_)) => {
                return Err(HandlerError::Transient(error.into()));
            }
            Err(error @ GatewayError::Permanent(_)) => {
                return Err(HandlerError::Permanent(error.into()));
            }
        };
        Ok(Charge::Answered {
            order_id: payment.order_id,
            outcome,
        })
    }
}

/// The payment intent an event asks for; a malformed event is a permanent failure.
fn intent(event: &OrderCreated) -> Result<PaymentIntent, HandlerError> {
    let invalid = |what: String| HandlerError::Permanent(anyhow::anyhow!(what));
    let intent = PaymentIntent {
        order_id: parse_id("order_id", &event.order_id)?,
        user_id: parse_id("user_id", &event.user_id)?,
        amount_minor: event.amount_minor,
        currency: event.currency.clone(),
    };
    if intent.amount_minor < 0 {
        return Err(invalid(format!(
            "amount_minor {} is negative",
            intent.amount_minor
        )));
    }
    if intent.currency.trim().is_empty() {
        return Err(invalid("currency is empty".into()));
    }
    Ok(intent)
}

impl<G: PaymentGateway> Handler for OrderCreatedHandler<G> {
    type Event = OrderCreated;
    type Prepared = Charge;

    async fn prepare(
        &self,
        pool: &PgPool,
        messages: &[&Incoming<OrderCreated>],
    ) -> Vec<Result<Charge, HandlerError>> {
        let intents: Vec<Result<PaymentIntent, HandlerError>> = messages
            .iter()
            .map(|message| intent(&message.event))
            .collect();
        let mut recorded = record_intents(pool, &intents).await;
        // The first message of the batch for each order, and, for every later one, that first.
        let mut first = HashMap::new();
        let mut follows = Vec::with_capacity(messages.len());
        let mut charges = Vec::with_capacity(messages.len());
        for (at, (message, intent)) in messages.iter().copied().zip(intents).enumerate() {
            let payment = intent.and_then(|intent| {
                if let Some(&earlier) = first.get(&intent.order_id) {
                    follows.push(Some(earlier));
                    return Ok(None);
                }
                first.insert(intent.order_id, at);
                follows.push(None);
                match recorded.remove(&intent.order_id) {
                    Some(payment) => payment.map(Some),
                    None => Err(HandlerError::Transient(anyhow::anyhow!(
                        "the payment intent was not recorded"
                    ))),
                }
            });
            if follows.len() == at {
                // The message failed before its order was known.
                follows.push(None);
            }
            charges.push(async move {
                let Some(payment) = payment? else {
                    return Ok(Charge::Recorded);
                };
                if payment.status != PaymentStatus::Processing {
                    return Ok(Charge::Recorded);
                }
                // In the flow's trace and with its ids, like the rest of the message's work.
                let span = tracing::info_span!(
                    "charge",
                    message_id = %message.message_id,
                    correlation_id = %message.correlation_id,
                );
                messaging::trace_context::set_parent(&span, &message.traceparent);
                self.charge(&payment, &message.event.user_email)
                    .instrument(span)
                    .await
            });
        }
        let mut charged: Vec<Result<Charge, HandlerError>> = stream::iter(charges)
            .buffered(self.settings.concurrency.max(1))
            .collect()
            .await;
        // A later message of an order (another event for it, or a copy of the first under its
        // message id: a retry whose original's ack was lost) shares the first's fate. Were it
        // applied while the first is retried, its inbox row would make the first's return a
        // duplicate, and the payment would stay processing for good.
        for (at, earlier) in follows.into_iter().enumerate() {
            if let Some(earlier) = earlier {
                charged[at] = same_as(&charged[earlier]);
            }
        }
        charged
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<OrderCreated>,
        charge: &Charge,
    ) -> Result<Vec<Envelope>, HandlerError> {
        handle_alone(self, tx, message, charge).await
    }

    /// The gateway's answers of the whole batch recorded in one update.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[BatchMessage<'_, OrderCreated, Charge>],
    ) -> Result<Vec<Vec<Envelope>>, BatchFailure> {
        let answered: Vec<(Uuid, &PaymentOutcome)> = batch
            .iter()
            .filter_map(|item| match item.prepared {
                Charge::Answered { order_id, outcome } => Some((*order_id, outcome)),
                Charge::Recorded => None,
            })
            .collect();
        let mut recorded: HashMap<_, _> = if answered.is_empty() {
            HashMap::new()
        } else {
            repository::record_outcomes(tx, &answered)
                .await?
                .into_iter()
                .map(|payment| (payment.order_id, payment))
                .collect()
        };
        let caused = batch.iter().map(|item| {
            item.span.in_scope(|| {
                let Charge::Answered { order_id, .. } = item.prepared else {
                    tracing::debug!("the payment's outcome is recorded already; nothing to do");
                    return Vec::new();
                };
                // The first message of an order records its outcome; another finds it recorded.
                let Some(payment) = recorded.remove(order_id) else {
                    tracing::debug!(
                        %order_id,
                        "another delivery recorded the payment's outcome; nothing to do"
                    );
                    return Vec::new();
                };
                tracing::debug!(
                    %order_id,
                    payment_id = %payment.payment_id,
                    status = payment.status.as_str(),
                    "payment processed"
                );
                vec![Envelope::new(
                    &wire::payment_processed(&payment),
                    &item.message.caused_context(),
                )]
            })
        });
        Ok(caused.collect())
    }
}

/// The first step's result for a message that follows another of its order in the batch.
fn same_as(first: &Result<Charge, HandlerError>) -> Result<Charge, HandlerError> {
    let cause = |error: &anyhow::Error| {
        anyhow::anyhow!("another delivery of this order in the batch failed: {error:#}")
    };
    match first {
        Ok(charge) => Ok(charge.clone()),
        Err(HandlerError::Unavailable(error)) => Err(HandlerError::Unavailable(cause(error))),
        Err(HandlerError::Transient(error)) => Err(HandlerError::Transient(cause(error))),
        Err(HandlerError::Permanent(error)) => Err(HandlerError::Permanent(cause(error))),
    }
}

/// Records the intents of a batch in one statement, and returns each order's payment (or why it
/// has none). When the statement fails for a reason other than an unavailable database, each
/// intent is recorded alone, so that one bad row fails only its own message.
async fn record_intents(
    pool: &PgPool,
    intents: &[Result<PaymentIntent, HandlerError>],
) -> HashMap<Uuid, Result<Payment, HandlerError>> {
    let valid: Vec<PaymentIntent> = intents
        .iter()
        .filter_map(|intent| intent.as_ref().ok().cloned())
        .collect();
    let error = match repository::record_intents(pool, &valid).await {
        Ok(payments) => return payments.into_iter().map(|p| (p.order_id, Ok(p))).collect(),
        Err(error) => HandlerError::from(error),
    };
    if valid.len() == 1 || matches!(error, HandlerError::Unavailable(_)) {
        let cause = format!("{error}");
        return valid
            .iter()
            .map(|intent| {
                let cause = anyhow::anyhow!("cannot record the payment intent: {cause}");
                let error = match &error {
                    HandlerError::Unavailable(_) => HandlerError::Unavailable(cause),
                    HandlerError::Transient(_) => HandlerError::Transient(cause),
                    HandlerError::Permanent(_) => HandlerError::Permanent(cause),
                };
                (intent.order_id, Err(error))
            })
            .collect();
    }
    let mut recorded = HashMap::with_capacity(valid.len());
    for intent in valid {
        let one = repository::record_intents(pool, std::slice::from_ref(&intent)).await;
        let payment = one.map_err(HandlerError::from).and_then(|mut payments| {
            payments.pop().ok_or_else(|| {
                HandlerError::Transient(anyhow::anyhow!("the payment intent was not recorded"))
            })
        });
        recorded.insert(intent.order_id, payment);
    }
    recorded
}
