//! Builds the order service from its settings; `main` and the tests run the same application.

use std::sync::Arc;

use messaging::topology::{ORDER_SERVICE_PAYMENT_PROCESSED, ORDER_SERVICE_USER_CREATED};
use proto::order::v1::order_service_server::OrderServiceServer;
use service_kit::{Application, ServiceRuntime, Settings};

use crate::{
    domain::PriceList,
    grpc::OrderApi,
    handlers::{PaymentProcessedHandler, UserCreatedHandler},
};

/// The full gRPC name health and reflection report.
pub const GRPC_SERVICE: &str = "order.v1.OrderService";

/// Migrates the database, connects the bus, starts the relay and both consumers, and binds the
/// listener.
pub async fn build(settings: &Settings, prices: PriceList) -> anyhow::Result<Application> {
    let runtime = ServiceRuntime::start(
        settings,
        crate::migrator(),
        GRPC_SERVICE,
        &[
            ORDER_SERVICE_USER_CREATED.subscription(),
            ORDER_SERVICE_PAYMENT_PROCESSED.subscription(),
        ],
    )
    .await?;
    runtime.spawn_consumer(
        ORDER_SERVICE_USER_CREATED,
        UserCreatedHandler::new(Arc::new(prices)),
    );
    runtime.spawn_consumer(ORDER_SERVICE_PAYMENT_PROCESSED, PaymentProcessedHandler);
    let api = OrderApi::new(runtime.pool.clone());
    let gate = runtime.database_gate();
    Ok(runtime.into_application(move |routes| {
        routes.add_service(OrderServiceServer::with_interceptor(api, gate))
    })?)
}
