//! What a stack under the ledger offers the books, and what every such stack sets up alike: the
//! sandbox, the services' environment, the pools the books read through, the folder the
//! services log to, the test's own broker connection.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};
use messaging::Topology;
use test_support::{Sandbox, TEST_RETRY_DELAYS};

use crate::{
    ledger::{book::Databases, load::Users},
    processes::Service,
};

/// The heartbeat the services run with: a stalled connection is noticed within two.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A stack of services the books are kept on.
// Implemented by the test binaries alone, which never need the futures to be `Send`.
#[allow(async_fn_in_trait)]
pub trait Stack {
    /// A client of each user-service instance.
    fn users(&self) -> Users;
    /// What it has like every other stack.
    fn base(&self) -> &Base;
    fn base_mut(&mut self) -> &mut Base;
    /// The AMQP URLs of the test's own connection to the broker, tried in turn.
    fn broker_urls(&self) -> Vec<String>;
    /// Where the broker's queues, connections and channels stand, for a failure message.
    async fn broker_state(&self) -> String;

    /// The pools on the three services' databases.
    fn databases(&self) -> &Databases {
        &self.base().databases
    }

    /// The bus namespace's exchanges and queues.
    fn topology(&self) -> &Topology {
        &self.base().sandbox.topology
    }

    /// A connection of the test's own to the broker, opened again (to the first of
    /// [`Stack::broker_urls`] that answers) when it was lost.
    async fn amqp(&mut self) -> &Connection {
        let urls = self.broker_urls();
        reconnect(&mut self.base_mut().amqp, &urls).await
    }

    /// The folder the services log to.
    fn logs(&self) -> &Path {
        self.base().logs.path()
    }
}

/// What every stack under the ledger has alike: the sandbox (databases and namespace), pools on
/// its databases, the folder the services log to, the test's own broker connection.
#[derive(Debug)]
pub struct Base {
    pub sandbox: Sandbox,
    databases: Databases,
    amqp: Option<Connection>,
    logs: LogFolder,
}

impl Base {
    /// A sandbox on the Postgres server at `postgres`, and a log folder named after `name`.
    pub fn new(name: &str, postgres: &str) -> Self {
        let sandbox = Sandbox::on_postgres(postgres);
        Self {
            databases: Databases::of(&sandbox),
            logs: LogFolder::new(name, &sandbox),
            amqp: None,
            sandbox,
        }
    }

    /// The environment of `service` on the sandbox's databases and namespace, against the
    /// broker(s) at `amqp_url`, with the ledger's heartbeat and retry delays.
    pub fn service_env(&self, service: Service, amqp_url: &str) -> Vec<(&'static str, String)> {
        let sandbox = &self.sandbox;
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

    /// Where the process called `name` logs.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }
}

/// A folder for the services' logs, removed when dropped unless the test failed.
#[derive(Debug)]
struct LogFolder(PathBuf);

impl LogFolder {
    /// `$TMPDIR/<name>-<namespace>`.
    fn new(name: &str, sandbox: &Sandbox) -> Self {
        let path =
            std::env::temp_dir().join(format!("{name}-{}", sandbox.topology.namespace().as_str()));
        std::fs::create_dir_all(&path).expect("a log folder");
        Self(path)
    }

    fn path(&self) -> &Path {
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

/// The test's own broker connection kept in `slot`, opened again when it was lost, to the first
/// of `urls` that answers (retrying until one does).
async fn reconnect<'a>(slot: &'a mut Option<Connection>, urls: &[String]) -> &'a Connection {
    let alive = slot.as_ref().is_some_and(|amqp| amqp.status().connected());
    if !alive {
        let connection = test_support::eventually_some(|| async {
            for url in urls {
                if let Ok(connection) =
                    Connection::connect(url, ConnectionProperties::default()).await
                {
                    return Some(connection);
                }
            }
            None
        })
        .await;
        *slot = Some(connection);
    }
    slot.as_ref().expect("connected")
}
