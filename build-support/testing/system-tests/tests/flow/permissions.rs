//! The broker users and permissions of the compose stack (`build-support/docker/rabbitmq/
//! definitions.json`), on a broker of the test's own: each service logged in as its own user,
//! under the names compose uses (no namespace), can do what it needs.

use messaging::{Namespace, Topology, TrustedProducers};
use order_service::domain::PriceList;
use payment_service::{gateway::Latency, handlers::ChargeSettings};
use proto::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use service_kit::Settings;
use sqlx::PgPool;
use test_support::{PrivateBroker, Running, Sandbox};
use tonic::Code;
use user_service::settings::Ingress;

const DEFINITIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docker/rabbitmq/definitions.json"
);
/// As `docker-compose.yml` sets it.
const TRUSTED_PRODUCERS: &str =
    "user_created=user_service,order_created=order_service,payment_processed=payment_service";

/// Settings for `service` in `sandbox`, logged in to `broker` as `user` (with its development
/// password, `<user>-dev` with dashes), without a namespace.
fn settings(
    sandbox: &Sandbox,
    broker: &PrivateBroker,
    service: &'static str,
    database: &str,
    user: &str,
) -> Settings {
    let password = format!("{}-dev", user.replace('_', "-"));
    let url = format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", broker.port());
    let mut settings = sandbox.settings(service, database, &url);
    settings.topology = Topology::new(Namespace::default()).with_retry(settings.retry.clone());
    settings.trusted_producers = TrustedProducers::parse(TRUSTED_PRODUCERS).expect("valid");
    settings
}

/// CreateUser for `email`: whether it was accepted (else refused by back-pressure).
async fn accepted(mut users: UserServiceClient<tonic::transport::Channel>, email: &str) -> bool {
    let answer = users
        .create_user(CreateUserRequest {
            email: email.into(),
            name: "Compose".into(),
            ..CreateUserRequest::default()
        })
        .await;
    match answer {
        Ok(_) => true,
        Err(status) if status.code() == Code::ResourceExhausted => false,
        Err(status) => panic!("CreateUser failed: {status:?}"),
    }
}

async fn paid_orders(orders: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from orders where status = 'paid'")
        .fetch_one(orders)
        .await
        .expect("count")
}

#[tokio::test]
async fn with_the_compose_broker_users_a_flow_is_paid_and_the_user_service_sees_it_end() {
    // Arrange: the compose users and permissions, and each service logged in as its own user;
    // the user service admits one flow at a time.
    let broker = PrivateBroker::start().await;
    broker.report(&["import_definitions", DEFINITIONS]).await;
    let sandbox = Sandbox::new();
    let user = user_service::build(
        &settings(&sandbox, &broker, "user-service", "users", "user_service"),
        Ingress {
            create_user_max_backlog: 1,
            ..Ingress::default()
        },
    )
    .await
    .expect("the user service starts");
    let order = order_service::build(
        &settings(
            &sandbox,
            &broker,
            "order-service",
            "orders",
            "order_service",
        ),
        PriceList::default(),
    )
    .await
    .expect("the order service starts");
    let payment = payment_service::startup::build(
        &settings(
            &sandbox,
            &broker,
            "payment-service",
            "payments",
            "payment_service",
        ),
        ChargeSettings::default(),
        Latency::NONE,
    )
    .await
    .expect("the payment service starts");
    let user = Running::ready(user, user_service::startup::GRPC_SERVICE).await;
    let _order = Running::ready(order, order_service::startup::GRPC_SERVICE).await;
    let _payment = Running::ready(payment, payment_service::startup::GRPC_SERVICE).await;
    let users = UserServiceClient::new(user.channel.clone());
    let orders = sandbox.pool("orders").await;

    // Act: one flow, to its end.
    assert!(accepted(users.clone(), "first@example.com").await);
    test_support::eventually(|| async { paid_orders(&orders).await == 1 }).await;

    // Assert: its payment_processed reached the user service, which admits the next flow (the
    // first one would otherwise hold the only slot until it expires, after a minute).
    test_support::eventually(|| accepted(users.clone(), "second@example.com")).await;
    test_support::eventually(|| async { paid_orders(&orders).await == 2 }).await;
}
