//! Builds the payment service from its settings; `main` and the tests run the same application.

use std::{future::Future, net::SocketAddr, sync::Arc};

use messaging::{EventConsumer, topology::PAYMENT_SERVICE_ORDER_CREATED};
use proto::payment::v1::payment_service_server::PaymentServiceServer;
use service_kit::{ServiceRuntime, Settings};

use crate::{
    gateway::{PaymentGateway, SimulatedGateway},
    grpc::PaymentApi,
    handlers::OrderCreatedHandler,
};

/// The full gRPC name health and reflection report.
const GRPC_SERVICE: &str = "payment.v1.PaymentService";
/// The consumer name in the inbox.
const CONSUMER: &str = "payment_service";

/// A started payment service: consuming, listening, not yet serving gRPC.
#[derive(Debug)]
pub struct Application {
    runtime: ServiceRuntime,
    local_addr: SocketAddr,
}

impl Application {
    /// The service with the simulated gateway.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        Self::build_with_gateway(settings, SimulatedGateway::default()).await
    }

    /// Migrates the database, connects the bus, starts the relay and the consumer charging
    /// through `gateway`, and binds the listener.
    pub async fn build_with_gateway(
        settings: &Settings,
        gateway: impl PaymentGateway,
    ) -> anyhow::Result<Self> {
        let runtime = ServiceRuntime::start(settings, sqlx::migrate!(), GRPC_SERVICE).await?;
        let consumer = EventConsumer::new(
            CONSUMER,
            PAYMENT_SERVICE_ORDER_CREATED,
            runtime.pool.clone(),
            runtime.bus.clone(),
            OrderCreatedHandler::new(Arc::new(gateway)),
        );
        runtime.spawn_worker(|stop| consumer.run(stop));
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
        let api = PaymentApi::new(self.runtime.pool.clone());
        tracing::info!(addr = %self.local_addr, "payment-service listening");
        self.runtime
            .serve(
                |routes| routes.add_service(PaymentServiceServer::new(api)),
                shutdown,
            )
            .await
    }
}
