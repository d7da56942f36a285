//! The stack under test: the three service binaries as processes of the test's own, on a
//! private Postgres cluster and a private RabbitMQ node (behind a proxy that can cut or stall
//! every broker connection), so that each can be killed, stopped or cut without touching the
//! shared servers.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};
use proto::user::v1::user_service_client::UserServiceClient;
use sqlx::{PgPool, postgres::PgPoolOptions};
use test_support::{BrokerProxy, PrivateBroker, PrivatePostgres, Sandbox, TEST_RETRY_DELAYS};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The heartbeat the services run with: a stalled connection is noticed within two.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a (re)started service gets to say SERVING.
const STARTUP: Duration = Duration::from_secs(90);

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    User,
    Order,
    Payment,
}

impl Service {
    pub const ALL: [Self; 3] = [Self::User, Self::Order, Self::Payment];

    pub fn binary(self) -> &'static str {
        match self {
            Self::User => "user-service",
            Self::Order => "order-service",
            Self::Payment => "payment-service",
        }
    }

    fn database(self) -> &'static str {
        match self {
            Self::User => "users",
            Self::Order => "orders",
            Self::Payment => "payments",
        }
    }

    fn grpc_service(self) -> &'static str {
        match self {
            Self::User => "user.v1.UserService",
            Self::Order => "order.v1.OrderService",
            Self::Payment => "payment.v1.PaymentService",
        }
    }
}

/// A service binary run as a child process; restartable on the same port.
#[derive(Debug)]
pub struct ServiceProcess {
    pub service: Service,
    command: PathBuf,
    env: Vec<(&'static str, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// A channel to its gRPC port, which survives its restarts.
    channel: Channel,
}

impl ServiceProcess {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("a log file");
        let child = Command::new(&self.command)
            .envs(self.env.iter().map(|(key, value)| (*key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("{} starts: {error}", self.command.display()));
        self.child = Some(child);
    }

    /// Sends `signal` (e.g. `-KILL`, `-TERM`) to the process and waits until it has exited.
    pub async fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the service runs");
        let pid = child.id().expect("a running process has a pid");
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(sent.success(), "kill {signal} {pid}");
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the process exits within 30 s of the signal")
            .expect("its exit status")
    }

    /// Starts it again and waits until it is SERVING.
    pub async fn restart(&mut self) {
        self.start();
        self.wait_until_serving().await;
    }

    /// What its health says, or `None` when it does not answer.
    pub async fn health(&self) -> Option<ServingStatus> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: self.service.grpc_service().into(),
        });
        request.set_timeout(Duration::from_secs(1));
        let response = HealthClient::new(self.channel.clone())
            .check(request)
            .await
            .ok()?;
        Some(response.into_inner().status())
    }

    async fn wait_until_serving(&self) {
        let deadline = tokio::time::Instant::now() + STARTUP;
        while self.health().await != Some(ServingStatus::Serving) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not say SERVING within {STARTUP:?}; its log: {}",
                self.service.binary(),
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines it logged.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<_> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

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

/// Where the service binaries are: beside the test binary's `deps/` folder (`cargo test` builds
/// them with the workspace's tests), or `LEDGER_BIN_DIR`.
fn binaries() -> PathBuf {
    if let Ok(dir) = std::env::var("LEDGER_BIN_DIR") {
        return dir.into();
    }
    let test = std::env::current_exe().expect("the test binary's path");
    let dir = test
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    for service in Service::ALL {
        assert!(
            dir.join(service.binary()).exists(),
            "{} is missing from {}: build the services first \
             (cargo build -p user-service -p order-service -p payment-service; test.sh does)",
            service.binary(),
            dir.display()
        );
    }
    dir
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
            let grpc_port = test_support::unused_port();
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
                ("GRPC_ADDR", format!("127.0.0.1:{grpc_port}")),
                ("METRICS_ADDR", "127.0.0.1:0".into()),
                // Room for a +flaky charge's two failures and those a fault adds.
                ("RETRY_DELAYS", format!("{TEST_RETRY_DELAYS},800ms,1600ms")),
                ("GATEWAY_LATENCY", "5ms..50ms".into()),
                ("RUST_LOG", "warn".into()),
                // Errors are expected by the hundred here; their backtraces are not needed.
                ("RUST_LIB_BACKTRACE", "0".into()),
            ];
            let channel = Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
                .expect("an endpoint")
                .connect_lazy();
            let mut process = ServiceProcess {
                service,
                command: bin.join(service.binary()),
                env,
                log: logs.join(format!("{}.log", service.binary())),
                child: None,
                channel,
            };
            process.start();
            services.push(process);
        }
        for process in &services {
            process.wait_until_serving().await;
        }
        let users = UserServiceClient::new(services[0].channel.clone());
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
