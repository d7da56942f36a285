//! Builds the payment service from its settings; `main` and the tests run the same application.

use std::sync::Arc;

use messaging::topology::PAYMENT_SERVICE_ORDER_CREATED;
use proto::payment::v1::payment_service_server::PaymentServiceServer;
use service_kit::{Application, ServiceRuntime, Settings};

use crate::{
    gateway::{PaymentGateway, SimulatedGateway},
    grpc::PaymentApi,
    handlers::OrderCreatedHandler,
};

/// The full gRPC name health and reflection report.
pub const GRPC_SERVICE: &str = "payment.v1.PaymentService";
/// The consumer name in the inbox.
const CONSUMER: &str = "payment_service";

/// The service with the simulated gateway.
pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
    build_with_gateway(settings, SimulatedGateway::default()).await
}

/// Migrates the database, connects the bus, starts the relay and the consumer charging through
/// `gateway`, and binds the listener.
pub async fn build_with_gateway(
    settings: &Settings,
    gateway: impl PaymentGateway,
) -> anyhow::Result<Application> {
    let runtime = ServiceRuntime::start(
        settings,
        sqlx::migrate!(),
        GRPC_SERVICE,
        &[PAYMENT_SERVICE_ORDER_CREATED],
    )
    .await?;
    runtime.spawn_consumer(
        CONSUMER,
        PAYMENT_SERVICE_ORDER_CREATED,
        OrderCreatedHandler::new(Arc::new(gateway)),
    );
    let api = PaymentApi::new(runtime.pool.clone());
    Ok(runtime
        .into_application(move |routes| routes.add_service(PaymentServiceServer::new(api)))?)
}
