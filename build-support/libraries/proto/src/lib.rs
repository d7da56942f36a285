//! The protobuf contract of the system, generated from `proto/` at build time.
//!
//! One module per protobuf package (`user::v1`, `order::v1`, `payment::v1`), each holding its
//! messages, its events and the tonic client and server of its service, plus the encoded
//! descriptor set that gRPC reflection serves.

#![allow(missing_debug_implementations, unreachable_pub, clippy::all)]

/// Every file of `proto/` and its imports, encoded as a `FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

/// The `user.v1` package: users, plans and `UserCreated`.
pub mod user {
    pub mod v1 {
        tonic::include_proto!("user.v1");
    }
}

/// The `order.v1` package: orders and `OrderCreated`.
pub mod order {
    pub mod v1 {
        tonic::include_proto!("order.v1");
    }
}

/// The `payment.v1` package: payments and `PaymentProcessed`.
pub mod payment {
    pub mod v1 {
        tonic::include_proto!("payment.v1");
    }
}

/// Names an event message with its full protobuf name, which goes into the AMQP `type` property,
/// with the routing key it is published under, and with the service that owns (produces) it.
pub trait Event: prost::Message + Default {
    /// The full protobuf name, e.g. `user.v1.UserCreated`.
    const TYPE_NAME: &'static str;
    /// The routing key on `events_exchange`, which is also the event's name.
    const ROUTING_KEY: &'static str;
    /// The service that produces it, as it names its queues and its broker user
    /// (e.g. `user_service`).
    const PRODUCER: &'static str;
}

impl Event for user::v1::UserCreated {
    const TYPE_NAME: &'static str = "user.v1.UserCreated";
    const ROUTING_KEY: &'static str = "user_created";
    const PRODUCER: &'static str = "user_service";
}

impl Event for order::v1::OrderCreated {
    const TYPE_NAME: &'static str = "order.v1.OrderCreated";
    const ROUTING_KEY: &'static str = "order_created";
    const PRODUCER: &'static str = "order_service";
}

impl Event for payment::v1::PaymentProcessed {
    const TYPE_NAME: &'static str = "payment.v1.PaymentProcessed";
    const ROUTING_KEY: &'static str = "payment_processed";
    const PRODUCER: &'static str = "payment_service";
}
