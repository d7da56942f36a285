//! Builds the user service from its settings; `main` and the tests run the same application.

use proto::user::v1::user_service_server::UserServiceServer;
use service_kit::{Application, ServiceRuntime, Settings};

use crate::{backlog::Backlog, completions, grpc::UserApi, settings::Ingress, writer::Writer};

/// The full gRPC name health and reflection report.
pub const GRPC_SERVICE: &str = "user.v1.UserService";

/// Migrates the database, connects the bus, starts the outbox relay, the CreateUser writer, the
/// backlog's probe and the watcher of the flows' ends (with a backlog limit), and binds the
/// listener.
pub async fn build(settings: &Settings, ingress: Ingress) -> anyhow::Result<Application> {
    let runtime = ServiceRuntime::start(settings, crate::migrator(), GRPC_SERVICE, &[]).await?;
    let (writer, writing) = Writer::new(
        runtime.pool.clone(),
        ingress.create_user_batch_max,
        Some(runtime.dispatcher.clone()),
    );
    // Not stopped by the shutdown signal: the writer ends when the gRPC server, which holds the
    // last handle, has drained, so that every call the server finishes is written first.
    runtime.spawn_worker(|_stop| writing);
    let backlog = Backlog::new(
        ingress.create_user_max_backlog,
        ingress.create_user_flow_expiry,
    );
    let (pool, bus) = (runtime.pool.clone(), runtime.bus.clone());
    runtime.spawn_worker(|stop| backlog.clone().watch(pool, bus, stop));
    if backlog.limit() > 0 {
        let (flows, bus) = (backlog.flows().clone(), runtime.bus.clone());
        runtime.spawn_worker(|stop| completions::watch(flows, bus, stop));
    }
    let calls = runtime.activity.counter("CreateUser");
    let api = UserApi::new(runtime.pool.clone(), writer, backlog, calls);
    let gate = runtime.database_gate();
    Ok(runtime.into_application(move |routes| {
        routes.add_service(UserServiceServer::with_interceptor(api, gate))
    })?)
}
