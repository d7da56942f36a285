//! Builds the order service from its settings; `main` and the tests run the same application.

use std::{future::Future, net::SocketAddr, sync::Arc};

use messaging::{
    EventConsumer,
    topology::{ORDER_SERVICE_PAYMENT_PROCESSED, ORDER_SERVICE_USER_CREATED},
};
use proto::order::v1::order_service_server::OrderServiceServer;
use service_kit::{ServiceRuntime, Settings};

use crate::{
    domain::PriceList,
    grpc::OrderApi,
    handlers::{PaymentProcessedHandler, UserCreatedHandler},
};

/// The full gRPC name health and reflection report.
const GRPC_SERVICE: &str = "order.v1.OrderService";
/// The consumer name in the inbox.
const CONSUMER: &str = "order_service";

/// A started order service: consuming, listening, not yet serving gRPC.
#[derive(Debug)]
pub struct Application {
    runtime: ServiceRuntime,
    local_addr: SocketAddr,
}

impl Application {
    /// Migrates the database, connects the bus, starts the relay and both consumers, and binds
    /// the listener.
    pub async fn build(settings: &Settings, prices: PriceList) -> anyhow::Result<Self> {
        let runtime = ServiceRuntime::start(settings, sqlx::migrate!(), GRPC_SERVICE).await?;
        let (pool, bus) = (runtime.pool.clone(), runtime.bus.clone());
        let handler = UserCreatedHandler::new(Arc::new(prices));
        runtime.spawn_worker(|stop| {
            EventConsumer::new(
                CONSUMER,
                ORDER_SERVICE_USER_CREATED,
                pool.clone(),
                bus.clone(),
                handler,
            )
            .run(stop)
        });
        runtime.spawn_worker(|stop| {
            EventConsumer::new(
                CONSUMER,
                ORDER_SERVICE_PAYMENT_PROCESSED,
                pool,
                bus,
                PaymentProcessedHandler,
            )
            .run(stop)
        });
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
        let api = OrderApi::new(self.runtime.pool.clone());
        tracing::info!(addr = %self.local_addr, "order-service listening");
        self.runtime
            .serve(
                |routes| routes.add_service(OrderServiceServer::new(api)),
                shutdown,
            )
            .await
    }
}
