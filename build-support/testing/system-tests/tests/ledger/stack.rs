//! The stack under test: the three service binaries as processes of the test's own, on a
//! private Postgres cluster and a private RabbitMQ node (behind a proxy that can cut or stall
//! every broker connection), so that each can be killed, stopped or cut without touching the
//! shared servers.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};
use proto::user::v1::user_service_client::UserServiceClient;
use sqlx::{PgPool, postgres::PgPoolOptions};
use system_tests::processes::binaries;
pub use system_tests::processes::{Service, ServiceProcess};
use test_support::{BrokerProxy, PrivateBroker, PrivatePostgres, Sandbox, TEST_RETRY_DELAYS};
use tonic::transport::Channel;

/// The heartbeat the services run with: a stalled connection is noticed within two.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Everything the ledger runs on. Fields drop in order: the services first, the servers last.
pub struct ChaosStack {
    pub services: Vec<ServiceProcess>,
    pub users: UserServiceClient<Channel>,
    pub users_db: PgPool,
    pub orders_db: PgPool,
    pub payments_db: PgPool,
    amqp: Option<Connection>,
    pub sandbox: Sandbox,
    pub proxy: BrokerProxy,
    pub broker: PrivateBroker,
    pub postgres: PrivatePostgres,
    logs: PathBuf,
}

impl ChaosStack {
    /// Starts the private servers, the proxy and the three services, and waits until every
    /// service is SERVING.
    pub async fn start() -> Self {
        let (postgres, broker) = tokio::join!(PrivatePostgres::start(), PrivateBroker::start());
        let proxy = BrokerProxy::start(&format!("127.0.0.1:{}", broker.port())).await;
        let sandbox = Sandbox::on_postgres(&postgres.url());
        let logs = std::env::temp_dir().join(format!(
            "chaos-ledger-{}",
            sandbox.topology.namespace().as_str()
        ));
        std::fs::create_dir_all(&logs).expect("a log folder");
        let bin = binaries();
        let mut services = Vec::new();
        for service in Service::ALL {
            let env = vec![
                (
                    "DATABASE_URL",
                    sandbox.database_url(service.database()).to_string(),
                ),
                ("AMQP_URL", proxy.url()),
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
            ];
            let log = logs.join(format!("{}.log", service.binary()));
            services.push(ServiceProcess::spawn(service, &bin, env, log));
        }
        for process in &services {
            process.wait_until_serving().await;
        }
        let users = UserServiceClient::new(services[0].channel());
        let pool = |service: Service| {
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(2))
                .connect_lazy(&sandbox.database_url(service.database()))
                .expect("a valid URL")
        };
        Self {
            users_db: pool(Service::User),
            orders_db: pool(Service::Order),
            payments_db: pool(Service::Payment),
            services,
            users,
            amqp: None,
            sandbox,
            proxy,
            broker,
            postgres,
            logs,
        }
    }

    pub fn service(&mut self, service: Service) -> &mut ServiceProcess {
        self.services
            .iter_mut()
            .find(|process| process.service == service)
            .expect("every service runs")
    }

    /// The test's own connection to the private broker (not through the proxy), opened again
    /// after the broker restarted.
    pub async fn amqp(&mut self) -> &Connection {
        let alive = self
            .amqp
            .as_ref()
            .is_some_and(|amqp| amqp.status().connected());
        if !alive {
            let connection = test_support::eventually_some(|| async {
                Connection::connect(&self.broker.url(), ConnectionProperties::default())
                    .await
                    .ok()
            })
            .await;
            self.amqp = Some(connection);
        }
        self.amqp.as_ref().expect("connected")
    }

    /// The services' logs, for a report.
    pub fn logs(&self) -> &Path {
        &self.logs
    }
}

impl Drop for ChaosStack {
    fn drop(&mut self) {
        // The child processes are killed on drop; their logs go unless something failed.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}
