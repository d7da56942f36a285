//! Builds the payment service from its settings; `main` and the tests run the same application.

use std::sync::Arc;

use messaging::topology::PAYMENT_SERVICE_ORDER_CREATED;
use proto::payment::v1::payment_service_server::PaymentServiceServer;
use service_kit::{Application, ServiceRuntime, Settings};
use sqlx::PgPool;

use crate::{
    gateway::{Latency, PaymentGateway, SimulatedGateway},
    grpc::PaymentApi,
    handlers::{ChargeSettings, OrderCreatedHandler},
};

/// The full gRPC name health and reflection report.
pub const GRPC_SERVICE: &str = "payment.v1.PaymentService";

/// The service with the simulated gateway answering after `latency`.
pub async fn build(
    settings: &Settings,
    charging: ChargeSettings,
    latency: Latency,
) -> anyhow::Result<Application> {
    build_with_gateway(settings, charging, |pool| {
        SimulatedGateway::new(pool, latency)
    })
    .await
}

/// Migrates the database, connects the bus, starts the relay and the consumer charging through
/// the gateway `gateway` makes (given the service's database, which the simulator keeps its
/// records in), and binds the listener.
pub async fn build_with_gateway<G: PaymentGateway>(
    settings: &Settings,
    charging: ChargeSettings,
    gateway: impl FnOnce(PgPool) -> G,
) -> anyhow::Result<Application> {
    let runtime = ServiceRuntime::start(
        settings,
        crate::migrator(),
        GRPC_SERVICE,
        &[PAYMENT_SERVICE_ORDER_CREATED.subscription()],
    )
    .await?;
    let gateway = Arc::new(gateway(runtime.pool.clone()));
    runtime.spawn_consumer(
        PAYMENT_SERVICE_ORDER_CREATED,
        OrderCreatedHandler::new(gateway, charging),
    );
    let api = PaymentApi::new(runtime.pool.clone());
    let gate = runtime.database_gate();
    Ok(runtime.into_application(move |routes| {
        routes.add_service(PaymentServiceServer::with_interceptor(api, gate))
    })?)
}
