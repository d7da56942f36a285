//! `order_created` → one payment through the gateway, and `payment_processed` through the
//! outbox.

use std::sync::Arc;

use messaging::{Envelope, Handler, HandlerError, Incoming, consumer::parse_id};
use proto::order::v1::OrderCreated;
use sqlx::PgConnection;

use crate::{
    domain::{NewPayment, PaymentStatus},
    gateway::{ChargeOutcome, ChargeRequest, GatewayError, PaymentGateway},
    repository,
};

/// Charges each order once.
#[derive(Debug)]
pub struct OrderCreatedHandler<G> {
    gateway: Arc<G>,
}

impl<G> OrderCreatedHandler<G> {
    pub fn new(gateway: Arc<G>) -> Self {
        Self { gateway }
    }
}

impl<G: PaymentGateway> Handler for OrderCreatedHandler<G> {
    type Event = OrderCreated;

    #[tracing::instrument(skip_all, fields(order_id = %message.event.order_id), err)]
    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<OrderCreated>,
    ) -> Result<Vec<Envelope>, HandlerError> {
        let event = &message.event;
        let order_id = parse_id("order_id", &event.order_id)?;
        let user_id = parse_id("user_id", &event.user_id)?;

        repository::lock_order(tx, order_id).await?;
        if let Some(payment) = repository::find_by_order(&mut *tx, order_id).await? {
            tracing::info!(payment_id = %payment.payment_id, "the order is already paid for; nothing to do");
            return Ok(Vec::new());
        }

        let charge = ChargeRequest {
            order_id,
            customer_email: event.user_email.clone(),
            amount_minor: event.amount_minor,
            currency: event.currency.clone(),
        };
        let (status, decline_reason) = match self.gateway.charge(&charge).await {
            Ok(ChargeOutcome::Succeeded) => (PaymentStatus::Succeeded, None),
            Ok(ChargeOutcome::Declined { reason }) => (PaymentStatus::Declined, Some(reason)),
            Err(error @ GatewayError::Transient(_)) => {
                return Err(HandlerError::Transient(error.into()));
            }
            Err(error @ GatewayError::Permanent(_)) => {
                return Err(HandlerError::Permanent(error.into()));
            }
        };

        let payment = repository::insert(
            &mut *tx,
            &NewPayment {
                order_id,
                user_id,
                amount_minor: event.amount_minor,
                currency: event.currency.clone(),
                status,
                decline_reason,
            },
        )
        .await?;
        tracing::info!(payment_id = %payment.payment_id, status = payment.status.as_str(), "payment processed");
        Ok(vec![Envelope::new(
            &payment.processed_event(),
            &message.caused_context(),
        )])
    }
}
