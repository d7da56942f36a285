//! `user_created` → the user's sign-up order, and `order_created` through the outbox.

use std::{collections::HashMap, sync::Arc};

use messaging::{
    Envelope, Handler, HandlerError, Incoming,
    consumer::{BatchFailure, BatchMessage, handle_alone, parse_id},
};
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

    /// The order an event asks for; a malformed event is a permanent failure.
    fn new_order(&self, event: &UserCreated) -> Result<NewOrder, HandlerError> {
        let user_id = parse_id("user_id", &event.user_id)?;
        let plan = wire::plan_from_proto(event.plan).ok_or_else(|| {
            HandlerError::Permanent(anyhow::anyhow!("unknown plan {}", event.plan))
        })?;
        Ok(NewOrder {
            user_id,
            user_email: event.email.clone(),
            plan,
            price: self.prices.price(plan),
        })
    }
}

impl Handler for UserCreatedHandler {
    type Event = UserCreated;
    type Prepared = ();

    async fn handle(
        &self,
        tx: &mut PgConnection,
        message: &Incoming<UserCreated>,
        prepared: &(),
    ) -> Result<Vec<Envelope>, HandlerError> {
        handle_alone(self, tx, message, prepared).await
    }

    /// The orders of the whole batch in one insert. Every message is checked before anything is
    /// written, so a malformed one fails alone.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[BatchMessage<'_, UserCreated, ()>],
    ) -> Result<Vec<Vec<Envelope>>, BatchFailure> {
        let new_orders = batch
            .iter()
            .enumerate()
            .map(|(at, item)| {
                self.new_order(&item.message.event)
                    .map_err(|error| BatchFailure {
                        at: Some(at),
                        error,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut created: HashMap<_, _> = repository::insert_all(&mut *tx, &new_orders)
            .await?
            .into_iter()
            .map(|order| (order.user_id, order))
            .collect();
        let caused = batch.iter().zip(&new_orders).map(|(item, new_order)| {
            let user_id = new_order.user_id;
            item.span.in_scope(|| {
                // The first message of a user takes the order created; another finds it made.
                let Some(order) = created.remove(&user_id) else {
                    tracing::debug!(
                        %user_id,
                        "the user already has its sign-up order; nothing to do"
                    );
                    return Vec::new();
                };
                tracing::debug!(%user_id, order_id = %order.order_id, "order created");
                vec![Envelope::new(
                    &wire::order_created(&order),
                    &item.message.caused_context(),
                )]
            })
        });
        Ok(caused.collect())
    }
}
