//! A service application running in the test's runtime, with a gRPC channel to it.

use service_kit::Application;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A running service. Dropping it cancels the service; [`Running::stop`] also waits for it.
#[derive(Debug)]
pub struct Running {
    /// A channel to the service's gRPC server; clients share it.
    pub channel: Channel,
    /// Where the service's gRPC server listens.
    pub addr: std::net::SocketAddr,
    grpc_service: &'static str,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Runs `application` and connects to it. `grpc_service` is the name its health is asked
    /// about.
    pub async fn start(application: Application, grpc_service: &'static str) -> Self {
        let addr = application.local_addr();
        let shutdown = CancellationToken::new();
        let server =
            tokio::spawn(application.run_until_stopped(shutdown.clone().cancelled_owned()));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("the gRPC server accepts connections");
        Self {
            channel,
            addr,
            grpc_service,
            shutdown,
            server: Some(server),
        }
    }

    /// The gRPC service it serves, e.g. `user.v1.UserService`.
    pub fn grpc_service(&self) -> &'static str {
        self.grpc_service
    }

    /// What the service's health says about its gRPC service.
    pub async fn health(&self) -> ServingStatus {
        HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: self.grpc_service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status()
    }

    /// Runs `application` and waits until its health says SERVING.
    pub async fn ready(application: Application, grpc_service: &'static str) -> Self {
        let running = Self::start(application, grpc_service).await;
        running.wait_for_health(ServingStatus::Serving).await;
        running
    }

    /// Waits until health reports `status`.
    pub async fn wait_for_health(&self, status: ServingStatus) {
        crate::eventually(|| async { self.health().await == status }).await;
    }

    /// Stops the service as SIGTERM would, and waits until it has drained.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the service task ends")
                .expect("the service stops cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
