//! The ledger: a steady CreateUser load with the test cards mixed in, the books that say what
//! became of every call, and the check of the three databases, the gateway's records and the
//! dead-letter queues against them, one fault at a time, printed as one table. The chaos ledger
//! (`tests/ledger/`, one node, one instance of each service) and the cluster test
//! (`tests/cluster/`, a RabbitMQ cluster, two instances of each service) both keep these books.

pub mod book;
pub mod config;
pub mod keeper;
pub mod load;
pub mod report;
pub mod stack;
