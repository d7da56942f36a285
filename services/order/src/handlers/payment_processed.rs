//! `payment_processed` → the order `PAID` or `PAYMENT_DECLINED`.

use std::collections::HashMap;

use messaging::{
    Envelope, Handler, HandlerError, Incoming,
    consumer::{BatchFailure, BatchMessage, handle_alone, parse_id},
};
use proto::payment::v1::{PaymentProcessed, PaymentStatus};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{domain::OrderStatus, repository};

/// Settles the order a payment was for.
#[derive(Debug, Clone, Default)]
pub struct PaymentProcessedHandler;

/// The order an event settles and its new status; a malformed event is a permanent failure.
fn settlement(event: &PaymentProcessed) -> Result<(Uuid, OrderStatus), HandlerError> {
    let order_id = parse_id("order_id", &event.order_id)?;
    let status = match PaymentStatus::try_from(event.status) {
        Ok(PaymentStatus::Succeeded) => OrderStatus::Paid,
        Ok(PaymentStatus::Declined) => OrderStatus::PaymentDeclined,
        _ => {
            return Err(HandlerError::Permanent(anyhow::anyhow!(
                "payment status {} is neither SUCCEEDED nor DECLINED",
                event.status
            )));
        }
    };
    Ok((order_id, status))
}

impl Handler for PaymentProcessedHandler {
    type Event = PaymentProcessed;
    type Prepared = ();

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<PaymentProcessed>,
        prepared: &(),
    ) -> Result<Vec<Envelope>, HandlerError> {
        handle_alone(self, tx, message, prepared).await
    }

    /// The pending orders of the whole batch settled in one update, and the others looked up in
    /// one query: settled before (nothing to do) or unknown (the message fails). Every message is
    /// checked before anything is written, so a malformed one fails alone.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[BatchMessage<'_, PaymentProcessed, ()>],
    ) -> Result<Vec<Vec<Envelope>>, BatchFailure> {
        let settlements = batch
            .iter()
            .enumerate()
            .map(|(at, item)| {
                settlement(&item.message.event).map_err(|error| BatchFailure {
                    at: Some(at),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut settled: HashMap<_, _> = repository::settle_all(&mut *tx, &settlements)
            .await?
            .into_iter()
            .map(|order| (order.order_id, order.status))
            .collect();
        // An order this update did not settle was settled before, or is unknown.
        let mut others: Vec<Uuid> = settlements
            .iter()
            .map(|(order_id, _)| *order_id)
            .filter(|order_id| !settled.contains_key(order_id))
            .collect();
        others.sort_unstable();
        others.dedup();
        let mut status_now = settled.clone();
        if !others.is_empty() {
            let found = repository::find_all(&mut *tx, &others).await?;
            status_now.extend(
                found
                    .into_iter()
                    .map(|order| (order.order_id, order.status)),
            );
        }
        if let Some(at) = settlements
            .iter()
            .position(|(order_id, _)| !status_now.contains_key(order_id))
        {
            let order_id = settlements[at].0;
            return Err(BatchFailure {
                at: Some(at),
                error: HandlerError::Permanent(anyhow::anyhow!(
                    "payment_processed for unknown order {order_id}"
                )),
            });
        }
        let caused = batch.iter().zip(&settlements).map(|(item, (order_id, _))| {
            let status = status_now
                .get(order_id)
                .map_or("", |status| status.as_str());
            item.span.in_scope(|| {
                // The first message of an order settled it; another finds it settled.
                if settled.remove(order_id).is_some() {
                    tracing::debug!(%order_id, status, "order settled");
                    // From the order's creation (its id is a UUIDv7) to its settlement.
                    if let Some(took) = messaging::envelope::minted_ago(*order_id) {
                        metrics::histogram!("order_settlement_seconds", "status" => status)
                            .record(took.as_secs_f64());
                    }
                } else {
                    tracing::debug!(%order_id, status, "order already settled; nothing to do");
                }
            });
            Vec::new()
        });
        Ok(caused.collect())
    }
}
