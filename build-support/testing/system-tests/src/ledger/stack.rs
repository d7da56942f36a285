//! What a stack under the ledger offers the books, and what every such stack sets up alike: the
//! services' environment, the pools the books read through, the folder the services log to.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lapin::Connection;
use messaging::Topology;
use sqlx::{PgPool, postgres::PgPoolOptions};
use test_support::{Sandbox, TEST_RETRY_DELAYS};

use crate::{ledger::load::Users, processes::Service};

/// The heartbeat the services run with: a stalled connection is noticed within two.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A stack of services the books are kept on.
// Implemented by the test binaries alone, which never need the futures to be `Send`.
#[allow(async_fn_in_trait)]
pub trait Stack {
    /// A client of each user-service instance.
    fn users(&self) -> Users;
    /// The pools on the three services' databases.
    fn databases(&self) -> &Databases;
    /// The bus namespace's exchanges and queues.
    fn topology(&self) -> &Topology;
    /// A connection of the test's own to the broker, opened again when it was lost.
    async fn amqp(&mut self) -> &Connection;
    /// Where the broker's queues, connections and channels stand, for a failure message.
    async fn broker_state(&self) -> String;
    /// The folder the services log to.
    fn logs(&self) -> &Path;
}

/// Pools on the three services' databases, for reading the books.
#[derive(Debug, Clone)]
pub struct Databases {
    pub users: PgPool,
    pub orders: PgPool,
    pub payments: PgPool,
}

impl Databases {
    /// Small lazy pools on `sandbox`'s databases (the services create them).
    pub fn of(sandbox: &Sandbox) -> Self {
        let pool = |service: Service| {
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(2))
                .connect_lazy(&sandbox.database_url(service.database()))
                .expect("a valid URL")
        };
        Self {
            users: pool(Service::User),
            orders: pool(Service::Order),
            payments: pool(Service::Payment),
        }
    }

    pub fn all(&self) -> [&PgPool; 3] {
        [&self.users, &self.orders, &self.payments]
    }
}

/// The environment of `service` on `sandbox`'s databases and namespace, against the broker(s)
/// at `amqp_url`, with the ledger's heartbeat and retry delays.
pub fn service_env(
    sandbox: &Sandbox,
    service: Service,
    amqp_url: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", sandbox.database_url(service.database())),
        ("AMQP_URL", amqp_url.to_owned()),
        ("AMQP_HEARTBEAT", format!("{}s", HEARTBEAT.as_secs())),
        (
            "BUS_NAMESPACE",
            sandbox.topology.namespace().as_str().to_owned(),
        ),
        // Room for a +flaky charge's two failures and those a fault adds.
        ("RETRY_DELAYS", format!("{TEST_RETRY_DELAYS},800ms,1600ms")),
        ("GATEWAY_LATENCY", "5ms..50ms".into()),
        ("RUST_LOG", "warn".into()),
        // Errors are expected by the hundred here; their backtraces are not needed.
        ("RUST_LIB_BACKTRACE", "0".into()),
    ]
}

/// A folder for the services' logs, removed when dropped unless the test failed.
#[derive(Debug)]
pub struct LogFolder(PathBuf);

impl LogFolder {
    /// `$TMPDIR/<name>-<namespace>`.
    pub fn new(name: &str, sandbox: &Sandbox) -> Self {
        let path =
            std::env::temp_dir().join(format!("{name}-{}", sandbox.topology.namespace().as_str()));
        std::fs::create_dir_all(&path).expect("a log folder");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LogFolder {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
