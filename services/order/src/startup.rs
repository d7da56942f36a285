//! Builds the order service from its settings; `main` and the tests run the same application.

use std::sync::Arc;

use messaging::{
    EventConsumer,
    topology::{ORDER_SERVICE_PAYMENT_PROCESSED, ORDER_SERVICE_USER_CREATED},
};
use proto::order::v1::order_service_server::OrderServiceServer;
use service_kit::{Application, ServiceRuntime, Settings};

use crate::{
    domain::PriceList,
    grpc::OrderApi,
    handlers::{PaymentProcessedHandler, UserCreatedHandler},
};

/// The full gRPC name health and reflection report.
pub const GRPC_SERVICE: &str = "order.v1.OrderService";
/// The consumer name in the inbox.
const CONSUMER: &str = "order_service";

/// Migrates the database, connects the bus, starts the relay and both consumers, and binds the
/// listener.
pub async fn build(settings: &Settings, prices: PriceList) -> anyhow::Result<Application> {
    let runtime = ServiceRuntime::start(settings, sqlx::migrate!(), GRPC_SERVICE).await?;
    let (pool, bus) = (runtime.pool.clone(), runtime.bus.clone());
    let user_created = EventConsumer::new(
        CONSUMER,
        ORDER_SERVICE_USER_CREATED,
        pool.clone(),
        bus.clone(),
        UserCreatedHandler::new(Arc::new(prices)),
    );
    let payment_processed = EventConsumer::new(
        CONSUMER,
        ORDER_SERVICE_PAYMENT_PROCESSED,
        pool.clone(),
        bus,
        PaymentProcessedHandler,
    );
    runtime.spawn_worker(|stop| user_created.run(stop));
    runtime.spawn_worker(|stop| payment_processed.run(stop));
    let api = OrderApi::new(pool);
    Ok(runtime.into_application(move |routes| routes.add_service(OrderServiceServer::new(api)))?)
}
