//! The payment service's integration tests, against the real Postgres and RabbitMQ. Each test
//! gets a fresh database and a random `BUS_NAMESPACE`; `order_created` events come from the test
//! as the order service would publish them.

// Helpers are shared between test modules of one binary; `pub` there is crate-wide anyway.
#![allow(unreachable_pub)]

mod api;
mod batches;
mod charging;
mod consuming;
mod failures;
mod helpers;
mod hostile;
