//! The user service as its own binary, its stdout and stderr in a file: what an operator's log
//! collector reads.

use std::{path::PathBuf, process::Stdio, time::Duration};

use proto::user::v1::user_service_client::UserServiceClient;
use test_support::{Sandbox, eventually, eventually_some, unused_port};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

/// A user-service process whose stdout and stderr go to a file.
pub struct LoggedService {
    pub client: UserServiceClient<Channel>,
    channel: Channel,
    log: PathBuf,
    _child: Child,
    // Last, so the process is killed before its database goes.
    _sandbox: Sandbox,
}

impl LoggedService {
    /// Starts `user-service` in a fresh sandbox with `LOG_FORMAT=format` and `RUST_LOG=filter`,
    /// and waits until it is SERVING.
    pub async fn start(format: &str, filter: &str) -> Self {
        let service = Self::spawn(
            Sandbox::new(),
            &[("LOG_FORMAT", format), ("RUST_LOG", filter)],
        )
        .await;
        service.wait_for_health(ServingStatus::Serving).await;
        service
    }

    /// Starts `user-service` in `sandbox` against the shared broker, with `env` on top of the
    /// sandbox's settings, and waits until it answers (not until it is SERVING).
    pub async fn spawn(sandbox: Sandbox, env: &[(&str, &str)]) -> Self {
        let grpc_addr = format!("127.0.0.1:{}", unused_port());
        let log = std::env::temp_dir().join(format!("user-service-{}.log", Uuid::new_v4()));
        let file = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_user-service"))
            .envs(sandbox.service_env("users"))
            .env("AMQP_URL", test_support::broker_url())
            .env("GRPC_ADDR", &grpc_addr)
            .env("METRICS_ADDR", format!("127.0.0.1:{}", unused_port()))
            .envs(env.iter().copied())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("user-service starts");
        let endpoint = format!("http://{grpc_addr}");
        let channel = eventually_some(|| async {
            tonic::transport::Endpoint::from_shared(endpoint.clone())
                .expect("a valid endpoint")
                .connect()
                .await
                .ok()
        })
        .await;
        Self {
            client: UserServiceClient::new(channel.clone()),
            channel,
            log,
            _child: child,
            _sandbox: sandbox,
        }
    }

    /// What health says now.
    pub async fn health(&self) -> ServingStatus {
        HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .map_or(ServingStatus::Unknown, |response| {
                response.into_inner().status()
            })
    }

    /// Waits until health says `status`.
    pub async fn wait_for_health(&self, status: ServingStatus) {
        eventually(|| async { self.health().await == status }).await;
    }

    /// Everything the process logged so far, once what the last call logged is written.
    pub async fn log(&self) -> String {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::read_to_string(&self.log).expect("the log file")
    }

    /// Waits until the log holds `needle`, and returns the log.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        eventually_some(|| async {
            let log = std::fs::read_to_string(&self.log).expect("the log file");
            log.contains(needle).then_some(log)
        })
        .await
    }
}

impl Drop for LoggedService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}
