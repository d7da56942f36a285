//! `spawn_app`: the payment service on port 0 in a fresh sandbox, with a client, its database
//! and the broker at hand.

use lapin::{Connection, Consumer};
use messaging::{Envelope, Topology};
use payment_service::{
    gateway::{Latency, PaymentGateway, SimulatedCharges, SimulatedGateway},
    handlers::ChargeSettings,
};
use proto::{
    order::v1::OrderCreated,
    payment::v1::{
        ListPaymentsRequest, Payment, PaymentStatus, payment_service_client::PaymentServiceClient,
    },
    user::v1::Plan,
};
use sqlx::PgPool;
use test_support::{Running, Sandbox};
use tonic::transport::Channel;
use uuid::Uuid;

/// A running payment service and what a test needs around it.
pub struct TestApp {
    pub client: PaymentServiceClient<Channel>,
    pub db: PgPool,
    pub amqp: Connection,
    // Held so the service runs as long as the test; dropping it stops the service.
    _service: Running,
    sandbox: Sandbox,
}

/// The payment service with the simulated gateway, ready before it returns.
pub async fn spawn_app() -> TestApp {
    spawn_app_with_gateway(simulator).await
}

/// The simulated gateway, answering at once, on the service's database.
pub fn simulator(pool: PgPool) -> SimulatedGateway {
    SimulatedGateway::new(pool, Latency::NONE)
}

/// The payment service charging through the gateway `gateway` makes, ready before it returns.
pub async fn spawn_app_with_gateway<G: PaymentGateway>(
    gateway: impl FnOnce(PgPool) -> G,
) -> TestApp {
    spawn_app_in(Sandbox::new(), gateway).await
}

/// The payment service in `sandbox` (where events may wait already), charging through the
/// gateway `gateway` makes.
pub async fn spawn_app_in<G: PaymentGateway>(
    sandbox: Sandbox,
    gateway: impl FnOnce(PgPool) -> G,
) -> TestApp {
    let settings = sandbox.settings("payment-service", "payments", &test_support::broker_url());
    let application =
        payment_service::startup::build_with_gateway(&settings, ChargeSettings::default(), gateway)
            .await
            .expect("the service starts");
    let service = Running::ready(application, payment_service::startup::GRPC_SERVICE).await;
    TestApp {
        client: PaymentServiceClient::new(service.channel.clone()),
        db: sandbox.pool("payments").await,
        amqp: test_support::broker().await,
        _service: service,
        sandbox,
    }
}

/// Publishes `envelopes` as the order service would, before any payment service runs in
/// `sandbox`: they wait in the queue, and the service's first batch takes them together.
pub async fn publish_before_start(sandbox: &Sandbox, envelopes: &[Envelope]) {
    let amqp = test_support::broker().await;
    sandbox
        .topology
        .declare(&amqp, messaging::topology::SUBSCRIPTIONS)
        .await
        .expect("the topology");
    for envelope in envelopes {
        test_support::publish(&amqp, &sandbox.topology, "test", envelope).await;
    }
}

impl TestApp {
    /// What the simulated gateway recorded for `order_id`.
    pub async fn charges_of(&self, order_id: &str) -> SimulatedCharges {
        let order_id = order_id.parse().expect("an order id");
        payment_service::gateway::simulated_charges(&self.db, order_id)
            .await
            .expect("the simulator's records")
    }

    pub fn topology(&self) -> &Topology {
        &self.sandbox.topology
    }

    /// A private queue receiving every event published with `routing_key`.
    pub async fn capture(&self, routing_key: &str) -> Consumer {
        test_support::capture(&self.amqp, self.topology(), routing_key).await
    }

    /// Publishes `envelope` as the order service would.
    pub async fn publish(&self, envelope: &Envelope) {
        test_support::publish(&self.amqp, self.topology(), "test", envelope).await;
    }

    /// Payments in the database.
    pub async fn payment_rows(&self) -> i64 {
        sqlx::query_scalar("select count(*) from payments")
            .fetch_one(&self.db)
            .await
            .expect("count payments")
    }

    /// The payments of `order_id`, through ListPayments.
    pub async fn payments_of_order(&self, order_id: &str) -> Vec<Payment> {
        self.client
            .clone()
            .list_payments(ListPaymentsRequest {
                order_id: order_id.into(),
                ..ListPaymentsRequest::default()
            })
            .await
            .expect("listed")
            .into_inner()
            .payments
    }

    /// The payment of `order_id`, once it has `status`.
    pub async fn payment_of_status(&self, order_id: &str, status: PaymentStatus) -> Payment {
        test_support::eventually_some(|| async {
            self.payments_of_order(order_id)
                .await
                .pop()
                .filter(|payment| payment.status() == status)
        })
        .await
    }

    /// The payment of `order_id`, once its outcome is recorded.
    pub async fn payment_of(&self, order_id: &str) -> Payment {
        test_support::eventually_some(|| async {
            self.payments_of_order(order_id)
                .await
                .pop()
                .filter(|payment| payment.status() != PaymentStatus::Processing)
        })
        .await
    }
}

/// An `order_created` for a new order of a new user with `email`.
pub fn order_created(email: &str) -> (OrderCreated, Envelope) {
    order_created_for(email, &Uuid::new_v4().to_string())
}

/// An `order_created` for a new order of `user_id`.
pub fn order_created_for(email: &str, user_id: &str) -> (OrderCreated, Envelope) {
    let event = OrderCreated {
        order_id: Uuid::now_v7().to_string(),
        user_id: user_id.into(),
        user_email: email.into(),
        plan: Plan::Basic.into(),
        amount_minor: 999,
        currency: "USD".into(),
        create_time: None,
    };
    let envelope = Envelope::new(&event, &test_support::new_context());
    (event, envelope)
}
