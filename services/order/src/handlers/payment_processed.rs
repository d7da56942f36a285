//! `payment_processed` → the order `PAID` or `PAYMENT_DECLINED`.

use messaging::{Envelope, Handler, HandlerError, Incoming, consumer::parse_id};
use proto::payment::v1::{PaymentProcessed, PaymentStatus};
use sqlx::PgConnection;

use crate::{domain::OrderStatus, repository};

/// Settles the order a payment was for.
#[derive(Debug, Clone, Default)]
pub struct PaymentProcessedHandler;

impl Handler for PaymentProcessedHandler {
    type Event = PaymentProcessed;
    type Prepared = ();

    #[tracing::instrument(skip_all, fields(order_id = %message.event.order_id), err)]
    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<PaymentProcessed>,
        _: &(),
    ) -> Result<Vec<Envelope>, HandlerError> {
        let event = &message.event;
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
        if let Some(order) = repository::settle(&mut *tx, order_id, status).await? {
            tracing::info!(status = order.status.as_str(), "order settled");
            return Ok(Vec::new());
        }
        match repository::find(&mut *tx, order_id).await? {
            Some(order) => {
                tracing::info!(
                    status = order.status.as_str(),
                    "order already settled; nothing to do"
                );
                Ok(Vec::new())
            }
            None => Err(HandlerError::Permanent(anyhow::anyhow!(
                "payment_processed for unknown order {order_id}"
            ))),
        }
    }
}
