//! The protobuf form of the order domain: the plan a `user_created` event names, what the gRPC
//! API shows and what `order_created` says. The edges (the gRPC API, the event handlers) convert
//! here; the domain knows no proto.

use proto::{order::v1 as pb, user::v1 as user_pb};
use service_kit::proto_time::to_timestamp;

use crate::domain::{Order, OrderStatus, Plan};

/// Reads the user service's plan; unspecified means [`Plan::Basic`], an unknown value `None`.
pub fn plan_from_proto(value: i32) -> Option<Plan> {
    match user_pb::Plan::try_from(value) {
        Ok(user_pb::Plan::Unspecified | user_pb::Plan::Basic) => Some(Plan::Basic),
        Ok(user_pb::Plan::Pro) => Some(Plan::Pro),
        Ok(user_pb::Plan::Enterprise) => Some(Plan::Enterprise),
        Err(_) => None,
    }
}

impl From<Plan> for user_pb::Plan {
    fn from(plan: Plan) -> Self {
        match plan {
            Plan::Basic => Self::Basic,
            Plan::Pro => Self::Pro,
            Plan::Enterprise => Self::Enterprise,
        }
    }
}

impl From<OrderStatus> for pb::OrderStatus {
    fn from(status: OrderStatus) -> Self {
        match status {
            OrderStatus::PendingPayment => Self::PendingPayment,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::PaymentDeclined => Self::PaymentDeclined,
        }
    }
}

/// The `order_created` event announcing `order`.
pub fn order_created(order: &Order) -> pb::OrderCreated {
    pb::OrderCreated {
        order_id: order.order_id.to_string(),
        user_id: order.user_id.to_string(),
        user_email: order.user_email.clone(),
        plan: user_pb::Plan::from(order.plan).into(),
        amount_minor: order.amount_minor,
        currency: order.currency.clone(),
        create_time: Some(to_timestamp(order.create_time)),
    }
}

impl From<Order> for pb::Order {
    fn from(order: Order) -> Self {
        Self {
            order_id: order.order_id.to_string(),
            user_id: order.user_id.to_string(),
            plan: user_pb::Plan::from(order.plan).into(),
            amount_minor: order.amount_minor,
            currency: order.currency,
            status: pb::OrderStatus::from(order.status).into(),
            create_time: Some(to_timestamp(order.create_time)),
            update_time: Some(to_timestamp(order.update_time)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_plan_is_basic() {
        assert_eq!(
            plan_from_proto(user_pb::Plan::Unspecified.into()),
            Some(Plan::Basic)
        );
    }

    #[test]
    fn every_plan_round_trips_through_proto() {
        for plan in Plan::ALL {
            assert_eq!(
                plan_from_proto(user_pb::Plan::from(plan).into()),
                Some(plan)
            );
        }
        assert_eq!(plan_from_proto(42), None);
    }
}
