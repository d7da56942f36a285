//! The three service binaries run as child processes of a test: each on its own gRPC and
//! metrics ports, logging to a file, restartable on the same ports. For the tests that kill,
//! signal or feed hostile input to a real process (the chaos ledger, the hostile group).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

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

    /// Its database's name (in a sandbox, prefixed with the sandbox's namespace).
    pub fn database(self) -> &'static str {
        match self {
            Self::User => "users",
            Self::Order => "orders",
            Self::Payment => "payments",
        }
    }

    /// The full name of its gRPC service, as health knows it.
    pub fn grpc_service(self) -> &'static str {
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
    metrics_addr: SocketAddr,
}

impl ServiceProcess {
    /// Starts `service`'s binary from `bin` (see [`binaries`]) with `env` (its gRPC and metrics
    /// addresses are added, on ports of their own), logging to `log`. It does not wait for it to
    /// be SERVING ([`ServiceProcess::wait_until_serving`] does).
    pub fn spawn(
        service: Service,
        bin: &Path,
        mut env: Vec<(&'static str, String)>,
        log: PathBuf,
    ) -> Self {
        let grpc_port = test_support::unused_port();
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], test_support::unused_port()));
        env.push(("GRPC_ADDR", format!("127.0.0.1:{grpc_port}")));
        env.push(("METRICS_ADDR", metrics_addr.to_string()));
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{grpc_port}"))
            .expect("an endpoint")
            .connect_lazy();
        let mut process = Self {
            service,
            command: bin.join(service.binary()),
            env,
            log,
            child: None,
            channel,
            metrics_addr,
        };
        process.start();
        process
    }

    /// A channel to its gRPC port.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Its `/metrics` address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Whether the process is still running (it has not exited, by itself or otherwise).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("a log file");
        let child = Command::new(&self.command)
            // Not inherited from the tests' own (`.cargo/config.toml`): a service binary sees to
            // the stack its threads need itself, and is tested that way.
            .env_remove("RUST_MIN_STACK")
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

    /// Waits until it says SERVING; fails the test after a while.
    pub async fn wait_until_serving(&self) {
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

/// Where the service binaries are: beside the test binary's `deps/` folder (`cargo test` builds
/// them with the workspace's tests), or `LEDGER_BIN_DIR`.
pub fn binaries() -> PathBuf {
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
