//! `user_created` → the user's sign-up order, and `order_created` through the outbox.

use std::sync::Arc;

use messaging::{Envelope, Handler, HandlerError, Incoming, consumer::parse_id};
use proto::user::v1::UserCreated;
use sqlx::PgConnection;

use crate::{
    domain::{NewOrder, PriceList},
    repository, wire,
};

/// Creates one order per user, priced by plan.
#[derive(Debug, Clone)]
pub struct UserCreatedHandler {
    prices: Arc<PriceList>,
}

impl UserCreatedHandler {
    pub fn new(prices: Arc<PriceList>) -> Self {
        Self { prices }
    }
}

impl Handler for UserCreatedHandler {
    type Event = UserCreated;
    type Prepared = ();

    #[tracing::instrument(skip_all, fields(user_id = %message.event.user_id), err)]
    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<UserCreated>,
        _: &(),
    ) -> Result<Vec<Envelope>, HandlerError> {
        let event = &message.event;
        let user_id = parse_id("user_id", &event.user_id)?;
        let plan = wire::plan_from_proto(event.plan).ok_or_else(|| {
            HandlerError::Permanent(anyhow::anyhow!("unknown plan {}", event.plan))
        })?;
        let new_order = NewOrder {
            user_id,
            user_email: event.email.clone(),
            plan,
            price: self.prices.price(plan),
        };
        match repository::insert(&mut *tx, &new_order).await? {
            Some(order) => {
                tracing::info!(order_id = %order.order_id, "order created");
                Ok(vec![Envelope::new(
                    &wire::order_created(&order),
                    &message.caused_context(),
                )])
            }
            None => {
                tracing::info!("the user already has its sign-up order; nothing to do");
                Ok(Vec::new())
            }
        }
    }
}
