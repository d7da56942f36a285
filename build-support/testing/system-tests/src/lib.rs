//! End-to-end tests of the whole chain live in `tests/flow/`: CreateUser on the user service
//! through `user_created`, `order_created` and `payment_processed` to a settled order, with the
//! three services started in the test process against the real Postgres and RabbitMQ.
//! `tests/ledger/` (the chaos ledger), `tests/cluster/` (instances and a RabbitMQ cluster under
//! the ledger) and `tests/hostile/` (hostile input) run the service binaries as processes
//! instead, with [`processes`]; the first two keep the books of [`ledger`].

pub mod ledger;
pub mod processes;
