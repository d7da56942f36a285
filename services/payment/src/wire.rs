//! The protobuf form of the payment domain: what the gRPC API shows and what
//! `payment_processed` says. The edges (the gRPC API, the event handler) convert here; the domain
//! knows no proto.

use proto::payment::v1 as pb;
use service_kit::proto_time::to_timestamp;

use crate::domain::{Payment, PaymentStatus};

impl From<PaymentStatus> for pb::PaymentStatus {
    fn from(status: PaymentStatus) -> Self {
        match status {
            PaymentStatus::Processing => Self::Processing,
            PaymentStatus::Succeeded => Self::Succeeded,
            PaymentStatus::Declined => Self::Declined,
        }
    }
}

/// The `payment_processed` event announcing `payment`.
pub fn payment_processed(payment: &Payment) -> pb::PaymentProcessed {
    pb::PaymentProcessed {
        payment_id: payment.payment_id.to_string(),
        order_id: payment.order_id.to_string(),
        user_id: payment.user_id.to_string(),
        status: pb::PaymentStatus::from(payment.status).into(),
        decline_reason: payment.decline_reason.clone().unwrap_or_default(),
        amount_minor: payment.amount_minor,
        currency: payment.currency.clone(),
        process_time: payment.process_time.map(to_timestamp),
    }
}

impl From<Payment> for pb::Payment {
    fn from(payment: Payment) -> Self {
        Self {
            payment_id: payment.payment_id.to_string(),
            order_id: payment.order_id.to_string(),
            user_id: payment.user_id.to_string(),
            amount_minor: payment.amount_minor,
            currency: payment.currency,
            status: pb::PaymentStatus::from(payment.status).into(),
            decline_reason: payment.decline_reason.unwrap_or_default(),
            create_time: Some(to_timestamp(payment.create_time)),
            process_time: payment.process_time.map(to_timestamp),
        }
    }
}
