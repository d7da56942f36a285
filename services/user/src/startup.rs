//! Builds the user service from its settings; `main` and the tests run the same application.

use proto::user::v1::user_service_server::UserServiceServer;
use service_kit::{Application, ServiceRuntime, Settings};

use crate::{grpc::UserApi, writer::Writer};

/// The full gRPC name health and reflection report.
pub const GRPC_SERVICE: &str = "user.v1.UserService";

/// Migrates the database, connects the bus, starts the outbox relay and the CreateUser writer
/// (up to `create_user_batch_max` calls per transaction) and binds the listener.
pub async fn build(
    settings: &Settings,
    create_user_batch_max: usize,
) -> anyhow::Result<Application> {
    let runtime = ServiceRuntime::start(settings, crate::migrator(), GRPC_SERVICE, &[]).await?;
    let (writer, writing) = Writer::new(runtime.pool.clone(), create_user_batch_max);
    // Not stopped by the shutdown signal: the writer ends when the gRPC server, which holds the
    // last handle, has drained, so that every call the server finishes is written first.
    runtime.spawn_worker(|_stop| writing);
    let api = UserApi::new(runtime.pool.clone(), writer);
    let gate = runtime.database_gate();
    Ok(runtime.into_application(move |routes| {
        routes.add_service(UserServiceServer::with_interceptor(api, gate))
    })?)
}
