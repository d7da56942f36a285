//! The user service's integration tests, against the real Postgres and RabbitMQ. Each test gets
//! a fresh database and a random `BUS_NAMESPACE` from `helpers::spawn_app`.

// Helpers are shared between test modules of one binary; `pub` there is crate-wide anyway.
#![allow(unreachable_pub)]

mod backpressure;
mod broker_outage;
mod create_user;
mod dependencies;
mod dispatch;
mod events;
mod failover;
mod get_user;
mod group_commit;
mod helpers;
mod hostile;
mod logged;
mod operability;
mod queues;
mod serving;
