//! The order service's integration tests, against the real Postgres and RabbitMQ. Each test gets
//! a fresh database and a random `BUS_NAMESPACE`; events come from the test as the user and
//! payment services would publish them.

// Helpers are shared between test modules of one binary; `pub` there is crate-wide anyway.
#![allow(unreachable_pub)]

mod api;
mod batches;
mod consuming;
mod helpers;
mod hostile;
mod inbox_retention;
mod plans;
mod process;
