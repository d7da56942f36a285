//! `spawn_stack`: the three services in one sandbox (one bus namespace, one database each), with
//! clients and database pools to assert on.

use lapin::Connection;
use order_service::domain::PriceList;
use payment_service::{
    gateway::{Latency, PaymentGateway, SimulatedGateway},
    handlers::ChargeSettings,
};
use proto::{
    order::v1::{ListOrdersRequest, Order, OrderStatus, order_service_client::OrderServiceClient},
    payment::v1::{ListPaymentsRequest, Payment, payment_service_client::PaymentServiceClient},
    user::v1::{CreateUserRequest, User, user_service_client::UserServiceClient},
};
use sqlx::PgPool;
use test_support::{Running, Sandbox};
use tonic::transport::Channel;
use user_service::settings::Ingress;

/// The three services of one test.
pub struct Stack {
    pub users: UserServiceClient<Channel>,
    pub orders: OrderServiceClient<Channel>,
    pub payments: Option<PaymentServiceClient<Channel>>,
    pub order_db: PgPool,
    pub payment_db: PgPool,
    pub amqp: Connection,
    amqp_url: String,
    services: Vec<Running>,
    pub sandbox: Sandbox,
}

/// The user and order services, and the payment service charging through the gateway `gateway`
/// makes (given the payment service's database).
pub async fn spawn_stack_with_gateway<G: PaymentGateway>(
    gateway: impl FnOnce(PgPool) -> G,
) -> Stack {
    let mut stack = spawn_stack_without_payment().await;
    stack.start_payment_service_with(gateway).await;
    stack
}

/// All three services, ready.
pub async fn spawn_stack() -> Stack {
    let mut stack = spawn_stack_without_payment().await;
    stack.start_payment_service().await;
    stack
}

/// The user and order services only; start the payment service with
/// [`Stack::start_payment_service`].
pub async fn spawn_stack_without_payment() -> Stack {
    spawn_partial_stack(
        Sandbox::new(),
        &test_support::broker_url(),
        Ingress::default(),
    )
    .await
}

/// All three services, the user service taking calls as `ingress` says.
pub async fn spawn_stack_with_ingress(ingress: Ingress) -> Stack {
    spawn_stack_with(ingress, |pool| SimulatedGateway::new(pool, Latency::NONE)).await
}

/// All three services, the user service taking calls as `ingress` says and the payment service
/// charging through the gateway `gateway` makes.
pub async fn spawn_stack_with<G: PaymentGateway>(
    ingress: Ingress,
    gateway: impl FnOnce(PgPool) -> G,
) -> Stack {
    let mut stack = spawn_partial_stack(Sandbox::new(), &test_support::broker_url(), ingress).await;
    stack.start_payment_service_with(gateway).await;
    stack
}

/// All three services in `sandbox` (whose Postgres they use), against the broker at `amqp_url`.
pub async fn spawn_stack_on(sandbox: Sandbox, amqp_url: &str) -> Stack {
    let mut stack = spawn_partial_stack(sandbox, amqp_url, Ingress::default()).await;
    stack.start_payment_service().await;
    stack
}

async fn spawn_partial_stack(sandbox: Sandbox, amqp_url: &str, ingress: Ingress) -> Stack {
    let user = start_user_service(&sandbox, amqp_url, ingress).await;
    let order = start_order_service(&sandbox, amqp_url).await;
    // The payment service creates its database when it starts; until then, point at it lazily.
    let payment_db = sqlx::postgres::PgPoolOptions::new()
        .connect_lazy(&sandbox.database_url("payments"))
        .expect("a valid URL");
    Stack {
        users: UserServiceClient::new(user.channel.clone()),
        orders: OrderServiceClient::new(order.channel.clone()),
        payments: None,
        order_db: sandbox.pool("orders").await,
        payment_db,
        amqp: lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
            .await
            .expect("the broker is reachable"),
        amqp_url: amqp_url.to_owned(),
        services: vec![user, order],
        sandbox,
    }
}

async fn start_user_service(sandbox: &Sandbox, amqp_url: &str, ingress: Ingress) -> Running {
    let settings = sandbox.settings("user-service", "users", amqp_url);
    let app = user_service::build(&settings, ingress)
        .await
        .expect("the user service starts");
    Running::ready(app, user_service::startup::GRPC_SERVICE).await
}

async fn start_order_service(sandbox: &Sandbox, amqp_url: &str) -> Running {
    let settings = sandbox.settings("order-service", "orders", amqp_url);
    let app = order_service::build(&settings, PriceList::default())
        .await
        .expect("the order service starts");
    Running::ready(app, order_service::startup::GRPC_SERVICE).await
}

impl Stack {
    /// Starts the payment service (again).
    pub async fn start_payment_service(&mut self) {
        self.start_payment_service_with(|pool| SimulatedGateway::new(pool, Latency::NONE))
            .await;
    }

    /// Starts the payment service charging through the gateway `gateway` makes.
    pub async fn start_payment_service_with<G: PaymentGateway>(
        &mut self,
        gateway: impl FnOnce(PgPool) -> G,
    ) {
        let settings = self
            .sandbox
            .settings("payment-service", "payments", &self.amqp_url);
        let app = payment_service::startup::build_with_gateway(
            &settings,
            ChargeSettings::default(),
            gateway,
        )
        .await
        .expect("the payment service starts");
        let running = Running::ready(app, payment_service::startup::GRPC_SERVICE).await;
        self.payments = Some(PaymentServiceClient::new(running.channel.clone()));
        self.services.push(running);
    }

    /// Waits until every running service's health reports `status`.
    pub async fn wait_for_health(
        &self,
        status: tonic_health::pb::health_check_response::ServingStatus,
    ) {
        for service in &self.services {
            service.wait_for_health(status).await;
        }
    }

    /// Starts one more order service on the same database and queues.
    pub async fn start_another_order_service(&mut self) {
        let running = start_order_service(&self.sandbox, &self.amqp_url).await;
        self.services.push(running);
    }

    /// CreateUser with `email` and a `request_id`, retried with the same `request_id` as a
    /// well-behaved client would (AIP-155, and README's advice): while the service answers
    /// UNAVAILABLE, when the call outlives the server's request timeout (DEADLINE_EXCEEDED: its
    /// outcome is unknown), and when the service is saturated (RESOURCE_EXHAUSTED: resent after
    /// the delay its `RetryInfo` asks for).
    pub async fn create_user_retrying(&self, email: &str) -> User {
        use tonic_types::StatusExt;

        let request = CreateUserRequest {
            email: email.into(),
            name: "Test User".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            ..CreateUserRequest::default()
        };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let status = match self.users.clone().create_user(request.clone()).await {
                Ok(response) => return response.into_inner().user.expect("a user"),
                Err(status) => status,
            };
            let pause = match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    std::time::Duration::from_millis(200)
                }
                tonic::Code::ResourceExhausted => status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay)
                    .unwrap_or(std::time::Duration::from_millis(200))
                    .min(std::time::Duration::from_secs(5)),
                _ => panic!("CreateUser failed: {status:?}"),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "CreateUser still failing after two minutes: {status:?}"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// CreateUser with `email`.
    pub async fn create_user(&self, email: &str) -> User {
        self.users
            .clone()
            .create_user(CreateUserRequest {
                email: email.into(),
                name: "Test User".into(),
                ..CreateUserRequest::default()
            })
            .await
            .expect("CreateUser succeeds")
            .into_inner()
            .user
            .expect("a user")
    }

    /// Creates `count` users concurrently, `user<i>@example.com`, each call retried as
    /// [`Stack::create_user_retrying`] does: that many at once can find every database
    /// connection taken on a busy machine (UNAVAILABLE), or more flows in flight than the user
    /// service admits (RESOURCE_EXHAUSTED).
    pub async fn create_users_at_once(&self, count: i64) -> Vec<User> {
        let calls = (0..count).map(|i| self.create_user_numbered(i));
        futures_util::future::join_all(calls).await
    }

    async fn create_user_numbered(&self, i: i64) -> User {
        self.create_user_retrying(&format!("user{i}@example.com"))
            .await
    }

    /// Waits until `count` orders are paid.
    pub async fn wait_for_paid_orders(&self, count: i64) {
        self.wait_for_paid_orders_within(test_support::PATIENCE, count)
            .await;
    }

    /// Waits until `count` orders are paid, for at most `patience`.
    pub async fn wait_for_paid_orders_within(&self, patience: std::time::Duration, count: i64) {
        test_support::eventually_within(patience, || async {
            Self::count(
                &self.order_db,
                "select count(*) from orders where status = 'paid'",
            )
            .await
                == count
        })
        .await;
    }

    /// The user's one order, once it has `status` (through ListOrders).
    pub async fn wait_for_order_status(&self, user_id: &str, status: OrderStatus) -> Order {
        test_support::eventually_some(|| async {
            self.orders_of(user_id)
                .await
                .pop()
                .filter(|order| order.status() == status)
        })
        .await
    }

    /// The user's orders, through ListOrders.
    pub async fn orders_of(&self, user_id: &str) -> Vec<Order> {
        self.orders
            .clone()
            .list_orders(ListOrdersRequest {
                user_id: user_id.into(),
                ..ListOrdersRequest::default()
            })
            .await
            .expect("ListOrders succeeds")
            .into_inner()
            .orders
    }

    /// The user's payments, through ListPayments.
    pub async fn payments_of(&self, user_id: &str) -> Vec<Payment> {
        self.payments
            .clone()
            .expect("the payment service runs")
            .list_payments(ListPaymentsRequest {
                user_id: user_id.into(),
                ..ListPaymentsRequest::default()
            })
            .await
            .expect("ListPayments succeeds")
            .into_inner()
            .payments
    }

    /// Rows of `sql` (a `select count(*)`) in `pool`.
    pub async fn count(pool: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("count")
    }
}
