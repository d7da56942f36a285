//! End-to-end tests of the whole chain live in `tests/flow/`: CreateUser on the user service
//! through `user_created`, `order_created` and `payment_processed` to a settled order, with the
//! three services started in the test process against the real Postgres and RabbitMQ.
//! `tests/ledger/` (the chaos ledger) and `tests/hostile/` (hostile input) run the service
//! binaries as processes instead, with [`processes`].

pub mod processes;
