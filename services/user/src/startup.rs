//! Builds the user service from its settings; `main` and the tests run the same application.

use proto::user::v1::user_service_server::UserServiceServer;
use service_kit::{Application, ServiceRuntime, Settings};

use crate::grpc::UserApi;

/// The full gRPC name health and reflection report.
pub const GRPC_SERVICE: &str = "user.v1.UserService";

/// Migrates the database, connects the bus, starts the outbox relay and binds the listener.
pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
    let runtime = ServiceRuntime::start(settings, crate::migrator(), GRPC_SERVICE, &[]).await?;
    let api = UserApi::new(runtime.pool.clone());
    let gate = runtime.database_gate();
    Ok(runtime.into_application(move |routes| {
        routes.add_service(UserServiceServer::with_interceptor(api, gate))
    })?)
}
