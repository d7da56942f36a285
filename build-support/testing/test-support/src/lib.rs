//! Test support shared by every integration test binary: an isolated [`Sandbox`] (fresh
//! databases and a random `BUS_NAMESPACE` on the shared Postgres and RabbitMQ, removed on drop),
//! a service [`Running`] in the test, event capture and publishing on the broker, polling with a
//! deadline, a TCP proxy that makes the broker reachable, cut or stalled on demand without
//! touching the shared one, private brokers, Postgres servers and a [`PrivateCluster`] of RabbitMQ
//! nodes; [`hostile`] input with the assertions that go with it; and batches of events applied as
//! a consumer applies them, without a broker ([`apply_as_consumer`]).

mod batches;
mod broker;
mod cluster;
pub mod hostile;
mod private_servers;
mod proxy;
mod running;

pub use batches::{Settled, apply_as_consumer, delivered};
pub use broker::{
    dead_letters, new_context, poison, publish, publish_raw, publisher, queue_depth, take_message,
};
pub use cluster::PrivateCluster;
pub use private_servers::{PrivateBroker, PrivatePostgres};
pub use proxy::BrokerProxy;
pub use running::Running;

use std::{future::Future, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties, Consumer, message::Delivery, options::BasicAckOptions,
};
use messaging::{BrokerAddresses, ConsumerTuning, Namespace, RetryPolicy, Topology};
use secrecy::SecretString;
use service_kit::{Settings, settings::LogFormat};
use sqlx::{Connection as _, PgConnection, PgPool, migrate::Migrator};
use tokio::net::TcpStream;
use uuid::Uuid;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Retry back-off in tests: short, so retries and exhaustion happen within a test.
pub const TEST_RETRY_DELAYS: &str = "100ms,200ms,400ms";

/// With `TEST_LOG` set (a `RUST_LOG`-style filter), the services' logs go to the test output.
fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG")
        && let Ok(guard) = service_kit::telemetry::init(&filter, LogFormat::Text, "test")
    {
        // The subscriber lives as long as the test process.
        std::mem::forget(guard);
    }
}

/// The shared Postgres server, without a database.
pub fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The shared RabbitMQ broker.
pub fn broker_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The broker user the tests log in as: the `user_id` of what they publish, which the services
/// trust (they log in as the same user).
pub fn broker_user() -> String {
    messaging::connection::broker_user(&broker_url())
}

/// The retry policy of [`TEST_RETRY_DELAYS`].
pub fn test_retry() -> RetryPolicy {
    RetryPolicy::parse(TEST_RETRY_DELAYS).expect("valid delays")
}

/// One test's private corner of the shared servers: a bus namespace and the databases named
/// after it. Dropping it drops the databases and deletes the namespace's exchanges and queues.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    pub topology: Topology,
    postgres: String,
    databases: std::sync::Mutex<Vec<String>>,
}

impl Sandbox {
    /// A new sandbox with a random id on the shared servers.
    pub fn new() -> Self {
        Self::on_postgres(&postgres_server())
    }

    /// A new sandbox whose databases live on the Postgres server at `postgres` (no database).
    pub fn on_postgres(postgres: &str) -> Self {
        init_logs();
        let id = Uuid::new_v4().simple().to_string();
        let namespace = Namespace::parse(&format!("test_{id}")).expect("a valid namespace");
        Self {
            id,
            topology: Topology::new(namespace).with_retry(test_retry()),
            postgres: postgres.to_owned(),
            databases: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The URL of this sandbox's database for `service` (e.g. `users`); the service creates it,
    /// the sandbox drops it.
    pub fn database_url(&self, service: &str) -> String {
        let name = format!("{service}_{}", self.id);
        let mut databases = self.databases.lock().expect("not poisoned");
        if !databases.contains(&name) {
            databases.push(name.clone());
        }
        format!("{}/{name}", self.postgres)
    }

    /// Settings for `service_name` with its database `database`, on port 0, in this sandbox's
    /// namespace, against the broker at `amqp_url`.
    pub fn settings(&self, service_name: &'static str, database: &str, amqp_url: &str) -> Settings {
        Settings {
            service_name,
            database_url: SecretString::from(self.database_url(database)),
            amqp_url: BrokerAddresses::parse(amqp_url).expect("a valid AMQP URL"),
            amqp_heartbeat: messaging::connection::DEFAULT_HEARTBEAT,
            grpc_addr: "127.0.0.1:0".parse().expect("a valid address"),
            metrics_addr: "127.0.0.1:0".parse().expect("a valid address"),
            outbox_max_age: Duration::from_secs(60),
            topology: self.topology.clone(),
            trusted_producers: Default::default(),
            retry: test_retry(),
            consumer: ConsumerTuning::default(),
            inbox_retention: service_kit::settings::duration(
                service_kit::settings::DEFAULT_INBOX_RETENTION,
            )
            .expect("a valid default"),
            grpc: service_kit::grpc_limits::GrpcLimits::default(),
            database_pool_size: 16,
            rust_log: "info".into(),
            log_format: LogFormat::Text,
            log_summary_interval: Duration::from_secs(60),
        }
    }

    /// The environment that puts a service binary in this sandbox: its database, the sandbox's
    /// namespace, and the tests' retry delays (so the retry queues it declares are the ones the
    /// sandbox deletes).
    pub fn service_env(&self, database: &str) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.database_url(database)),
            (
                "BUS_NAMESPACE",
                self.topology.namespace().as_str().to_owned(),
            ),
            ("RETRY_DELAYS", TEST_RETRY_DELAYS.to_owned()),
        ]
    }

    /// A pool on this sandbox's database for `service`.
    pub async fn pool(&self, service: &str) -> PgPool {
        PgPool::connect(&self.database_url(service))
            .await
            .expect("the service created its database")
    }

    /// A pool on this sandbox's database for `service`, created and migrated as the service does
    /// it (with `migrator`, its migrations), without running the service: for a test that drives
    /// the service's code itself.
    pub async fn migrated_pool(&self, service: &str, migrator: Migrator) -> PgPool {
        let url = SecretString::from(self.database_url(service));
        service_kit::database::connect_and_migrate(&url, 4, migrator)
            .await
            .expect("the database is created and migrated")
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let databases =
            std::mem::take(&mut *self.databases.lock().unwrap_or_else(|e| e.into_inner()));
        let topology = self.topology.clone();
        let postgres = self.postgres.clone();
        // Clean-up needs async I/O but Drop is sync: run it on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&format!("{postgres}/postgres")).await
                {
                    for database in databases {
                        let _ = sqlx::query(&format!(
                            "drop database if exists \"{database}\" with (force)"
                        ))
                        .execute(&mut admin)
                        .await;
                    }
                }
                if let Ok(amqp) =
                    Connection::connect(&broker_url(), ConnectionProperties::default()).await
                    && let Ok(channel) = amqp.create_channel().await
                {
                    let _ = topology.delete(&channel).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A connection of the test's own to the shared broker.
pub async fn broker() -> Connection {
    Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .expect("the test broker is reachable")
}

/// A private queue bound to `routing_key` on `topology`'s events exchange (declaring the
/// topology first, as a service would), and a consumer on it.
pub async fn capture(amqp: &Connection, topology: &Topology, routing_key: &str) -> Consumer {
    topology
        .declare(amqp, messaging::topology::SUBSCRIPTIONS)
        .await
        .expect("the topology");
    topology
        .watch(amqp, routing_key)
        .await
        .expect("a capture queue and its consumer")
}

/// The next message on `consumer`, acked; panics after [`PATIENCE`].
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("a message arrives in time")
        .expect("the consumer is open")
        .expect("the delivery is intact");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    delivery
}

/// Asserts that nothing more arrives on `consumer` within `wait`.
pub async fn assert_no_more_deliveries(consumer: &mut Consumer, wait: Duration) {
    if let Ok(Some(delivery)) = tokio::time::timeout(wait, consumer.next()).await {
        panic!("unexpected extra message: {delivery:?}");
    }
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(PATIENCE, condition).await;
}

/// Polls `probe` until it finds something, and returns it; panics after [`PATIENCE`].
pub async fn eventually_some<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing found within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `condition` until it holds; panics after `patience`.
pub async fn eventually_within<F, Fut>(patience: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port on 127.0.0.1 that nothing listens on (yet).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// An AMQP URL for the shared broker's credentials at `127.0.0.1:port`.
pub fn broker_url_at(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// Forwards `port` to the shared broker from now on, until the proxy is dropped: a broker
/// "coming back" at the address a service was given.
pub async fn open_broker_proxy(port: u16) -> BrokerProxy {
    BrokerProxy::start_on(port, &broker_address()).await
}

/// A proxy in front of the shared broker, on a port of its own.
pub async fn shared_broker_proxy() -> BrokerProxy {
    BrokerProxy::start(&broker_address()).await
}

fn broker_address() -> String {
    let url = broker_url();
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("an AMQP URL with a host");
    authority.rsplit('@').next().expect("host:port").to_owned()
}

/// The body of `GET http://<addr><path>` (HTTP/1.1, `Connection: close`); panics unless 200.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("the endpoint accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the Prometheus sample `name{labels}` in `exposition` (labels as rendered, e.g.
/// `consumer="order_service",outcome="applied"`; order matters), if present.
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let inner = rest.strip_prefix('{')?.strip_suffix('}')?;
        let all = labels.iter().all(|(key, wanted)| {
            inner
                .split(',')
                .any(|pair| pair == format!("{key}=\"{wanted}\""))
        });
        all.then(|| value.parse().ok()).flatten()
    })
}
