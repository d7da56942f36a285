//! Builds the user service from its settings; `main` and the tests run the same application.

use std::{future::Future, net::SocketAddr};

use proto::user::v1::user_service_server::UserServiceServer;
use service_kit::{ServiceRuntime, Settings};

use crate::grpc::UserApi;

/// The full gRPC name health and reflection report.
const GRPC_SERVICE: &str = "user.v1.UserService";

/// A started user service, listening but not yet serving.
#[derive(Debug)]
pub struct Application {
    runtime: ServiceRuntime,
    local_addr: SocketAddr,
}

impl Application {
    /// Migrates the database, connects the bus, starts the outbox relay and binds the listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let runtime = ServiceRuntime::start(settings, sqlx::migrate!(), GRPC_SERVICE).await?;
        let local_addr = runtime.local_addr()?;
        Ok(Self {
            runtime,
            local_addr,
        })
    }

    /// Where the gRPC server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then drains and stops.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let api = UserApi::new(self.runtime.pool.clone());
        tracing::info!(addr = %self.local_addr, "user-service listening");
        self.runtime
            .serve(
                |routes| routes.add_service(UserServiceServer::new(api)),
                shutdown,
            )
            .await
    }
}
