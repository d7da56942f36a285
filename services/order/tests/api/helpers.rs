//! `spawn_app`: the order service on port 0 in a fresh sandbox, with a client, its database and
//! the broker at hand.

use lapin::{Connection, Consumer};
use messaging::{Envelope, EventContext, Topology};
use order_service::domain::PriceList;
use proto::{
    order::v1::{GetOrderRequest, Order, order_service_client::OrderServiceClient},
    payment::v1::{PaymentProcessed, PaymentStatus},
    user::v1::{Plan, UserCreated},
};
use service_kit::Settings;
use sqlx::PgPool;
use test_support::{Running, Sandbox};
use tonic::transport::Channel;
use uuid::Uuid;

/// A running order service and what a test needs around it.
pub struct TestApp {
    pub client: OrderServiceClient<Channel>,
    /// Where the service serves `/metrics`.
    pub metrics_addr: std::net::SocketAddr,
    pub db: PgPool,
    pub amqp: Connection,
    // Held so the service runs as long as the test; dropping it stops the service.
    service: Option<Running>,
    sandbox: Sandbox,
}

/// The order service with the default prices, ready before it returns.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The order service with the default prices and settings `configure` changes.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let sandbox = Sandbox::new();
    let mut settings = instance_settings(&sandbox);
    configure(&mut settings);
    let (service, metrics_addr) = start_instance_with(&settings).await;
    TestApp {
        client: OrderServiceClient::new(service.channel.clone()),
        metrics_addr,
        db: sandbox.pool("orders").await,
        amqp: test_support::broker().await,
        service: Some(service),
        sandbox,
    }
}

fn instance_settings(sandbox: &Sandbox) -> Settings {
    sandbox.settings("order-service", "orders", &test_support::broker_url())
}

async fn start_instance(sandbox: &Sandbox) -> (Running, std::net::SocketAddr) {
    start_instance_with(&instance_settings(sandbox)).await
}

async fn start_instance_with(settings: &Settings) -> (Running, std::net::SocketAddr) {
    let application = order_service::build(settings, PriceList::default())
        .await
        .expect("the service starts");
    let metrics_addr = application.metrics_addr();
    let running = Running::ready(application, order_service::startup::GRPC_SERVICE).await;
    (running, metrics_addr)
}

impl TestApp {
    pub fn topology(&self) -> &Topology {
        &self.sandbox.topology
    }

    /// Stops the instance `spawn_app` started (gracefully); its queues stay.
    pub async fn stop(&mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await;
        }
    }

    /// A second instance of the service on the same database and queues.
    pub async fn start_another_instance(&self) -> Running {
        start_instance(&self.sandbox).await.0
    }

    /// A private queue receiving every event published with `routing_key`.
    pub async fn capture(&self, routing_key: &str) -> Consumer {
        test_support::capture(&self.amqp, self.topology(), routing_key).await
    }

    /// Publishes `envelope` as the user or payment service would.
    pub async fn publish(&self, envelope: &Envelope) {
        test_support::publish(&self.amqp, self.topology(), "test", envelope).await;
    }

    /// Orders in the database.
    pub async fn order_rows(&self) -> i64 {
        sqlx::query_scalar("select count(*) from orders")
            .fetch_one(&self.db)
            .await
            .expect("count orders")
    }

    /// The order of `user_id`, once there is one.
    pub async fn order_of(&self, user_id: &str) -> Order {
        let order_id: Uuid = test_support::eventually_some(|| async {
            sqlx::query_scalar("select order_id from orders where user_id = $1::uuid")
                .bind(user_id)
                .fetch_optional(&self.db)
                .await
                .expect("query")
        })
        .await;
        self.get_order(&order_id.to_string()).await
    }

    /// GetOrder.
    pub async fn get_order(&self, order_id: &str) -> Order {
        self.client
            .clone()
            .get_order(GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .expect("the order exists")
            .into_inner()
            .order
            .expect("an order")
    }
}

/// A `user_created` envelope for a new user.
pub fn user_created(email: &str, plan: Plan) -> Envelope {
    user_created_in(email, plan, &test_support::new_context())
}

/// A `user_created` envelope for a new user, in a given flow.
pub fn user_created_in(email: &str, plan: Plan, context: &EventContext) -> Envelope {
    let event = UserCreated {
        user_id: Uuid::new_v4().to_string(),
        email: email.into(),
        name: "Test User".into(),
        plan: plan.into(),
        create_time: None,
    };
    Envelope::new(&event, context)
}

/// A `user_created` envelope the handler must refuse: its user_id is not a UUID.
pub fn user_created_without_uuid() -> Envelope {
    let event = UserCreated {
        user_id: "not-a-uuid".into(),
        email: "poison@example.com".into(),
        name: "Poison".into(),
        plan: Plan::Basic.into(),
        create_time: None,
    };
    Envelope::new(&event, &test_support::new_context())
}

/// A `payment_processed` envelope settling `order`.
pub fn payment_processed(order: &Order, status: PaymentStatus) -> Envelope {
    let event = PaymentProcessed {
        payment_id: Uuid::new_v4().to_string(),
        order_id: order.order_id.clone(),
        user_id: order.user_id.clone(),
        status: status.into(),
        decline_reason: if status == PaymentStatus::Declined {
            "card_declined".into()
        } else {
            String::new()
        },
        amount_minor: order.amount_minor,
        currency: order.currency.clone(),
        process_time: None,
    };
    Envelope::new(&event, &test_support::new_context())
}

/// The user id a `user_created` envelope announces.
pub fn user_id(envelope: &Envelope) -> String {
    use prost::Message;
    UserCreated::decode(envelope.payload.as_slice())
        .expect("a UserCreated")
        .user_id
}
