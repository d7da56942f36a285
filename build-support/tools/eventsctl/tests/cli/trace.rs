//! `eventsctl trace` against the user, order and payment services running in the test (one
//! sandbox: fresh databases, a private bus namespace, the tests' short retry delays), on the
//! real Postgres and RabbitMQ.

use std::process::{Command, Output};

use messaging::topology::PAYMENT_SERVICE_ORDER_CREATED;
use order_service::domain::PriceList;
use payment_service::{gateway::Latency, handlers::ChargeSettings};
use proto::{
    order::v1::{ListOrdersRequest, Order, OrderStatus, order_service_client::OrderServiceClient},
    user::v1::{CreateUserRequest, User, user_service_client::UserServiceClient},
};
use test_support::{Running, Sandbox, queue_depth};
use tonic::transport::Channel;

use crate::{run_bounded, stderr, stdout};

/// The three services of one test, in one sandbox.
struct Services {
    users: UserServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
    running: Vec<Running>,
    sandbox: Sandbox,
}

async fn spawn_services() -> Services {
    let sandbox = Sandbox::new();
    let broker = test_support::broker_url();
    let settings = |name, database| sandbox.settings(name, database, &broker);
    let user = user_service::build(&settings("user-service", "users"), Default::default())
        .await
        .expect("the user service starts");
    let user = Running::ready(user, user_service::startup::GRPC_SERVICE).await;
    let order = order_service::build(&settings("order-service", "orders"), PriceList::default())
        .await
        .expect("the order service starts");
    let order = Running::ready(order, order_service::startup::GRPC_SERVICE).await;
    let payment = payment_service::build(
        &settings("payment-service", "payments"),
        ChargeSettings::default(),
        Latency::NONE,
    )
    .await
    .expect("the payment service starts");
    let payment = Running::ready(payment, payment_service::startup::GRPC_SERVICE).await;
    Services {
        users: UserServiceClient::new(user.channel.clone()),
        orders: OrderServiceClient::new(order.channel.clone()),
        running: vec![user, order, payment],
        sandbox,
    }
}

impl Services {
    /// CreateUser with `email`, the call's `x-request-id` being `request_id`.
    async fn create_user(&self, email: &str, request_id: &str) -> User {
        let mut request = tonic::Request::new(CreateUserRequest {
            email: email.into(),
            name: "Test User".into(),
            ..CreateUserRequest::default()
        });
        request
            .metadata_mut()
            .insert("x-request-id", request_id.parse().expect("ascii"));
        self.users
            .clone()
            .create_user(request)
            .await
            .expect("CreateUser succeeds")
            .into_inner()
            .user
            .expect("a user")
    }

    /// The user's one order, once it has `status`.
    async fn order_once(&self, user: &User, status: OrderStatus) -> Order {
        test_support::eventually_some(|| async {
            self.orders
                .clone()
                .list_orders(ListOrdersRequest {
                    user_id: user.user_id.clone(),
                    ..ListOrdersRequest::default()
                })
                .await
                .expect("ListOrders succeeds")
                .into_inner()
                .orders
                .pop()
                .filter(|order| order.status() == status)
        })
        .await
    }

    /// `eventsctl trace <args>` at these services, on the broker at `amqp_url` in `namespace`;
    /// waited for off the runtime, which runs the services.
    async fn trace_on(&self, amqp_url: &str, namespace: &str, args: &[&str]) -> Output {
        let address = |at: usize| format!("http://{}", self.running[at].addr);
        let mut command = Command::new(env!("CARGO_BIN_EXE_eventsctl"));
        command
            .args([
                "--amqp-url",
                amqp_url,
                "--bus-namespace",
                namespace,
                "trace",
            ])
            .args(args)
            .args(["--user-addr", &address(0)])
            .args(["--order-addr", &address(1)])
            .args(["--payment-addr", &address(2)]);
        tokio::task::spawn_blocking(move || run_bounded(command))
            .await
            .expect("eventsctl is waited for")
    }

    /// `eventsctl trace <args>` at these services and their broker and namespace.
    async fn trace(&self, args: &[&str]) -> Output {
        let namespace = self.sandbox.topology.namespace().as_str();
        self.trace_on(&test_support::broker_url(), namespace, args)
            .await
    }
}

/// The text of a trace that succeeded.
fn traced(output: &Output) -> String {
    assert!(output.status.success(), "{}", stderr(output));
    stdout(output)
}

/// The index of the first line of `text` that contains `part`.
fn line_of(text: &str, part: &str) -> usize {
    text.lines()
        .position(|line| line.contains(part))
        .unwrap_or_else(|| panic!("no line contains {part:?}:\n{text}"))
}

fn request_id() -> String {
    format!("reused-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn a_correlation_id_shared_by_two_users_traces_both_flows_one_after_the_other() {
    // Arrange: a client reuses its x-request-id for two CreateUser calls.
    let services = spawn_services().await;
    let shared = request_id();
    let ada = services.create_user("ada@example.com", &shared).await;
    let bob = services
        .create_user("bob+decline@example.com", &shared)
        .await;
    let ada_order = services.order_once(&ada, OrderStatus::Paid).await;
    let bob_order = services
        .order_once(&bob, OrderStatus::PaymentDeclined)
        .await;

    // Act
    let text = traced(&services.trace(&[&shared]).await);
    let json = traced(&services.trace(&[&shared, "--json"]).await);
    let one = traced(&services.trace(&[&bob.user_id]).await);

    // Assert: a header per user, oldest first, each followed by its own flow.
    let ada_header = line_of(
        &text,
        &format!("user {} (1 of 2, correlation id {shared})", ada.user_id),
    );
    let bob_header = line_of(
        &text,
        &format!("user {} (2 of 2, correlation id {shared})", bob.user_id),
    );
    let ada_paid = line_of(
        &text,
        &format!("order {} ORDER_STATUS_PAID", ada_order.order_id),
    );
    let bob_declined = line_of(
        &text,
        &format!("order {} ORDER_STATUS_PAYMENT_DECLINED", bob_order.order_id),
    );
    assert!(ada_header < ada_paid && ada_paid < bob_header, "{text}");
    assert!(bob_header < bob_declined, "{text}");
    assert!(
        text.contains("PAYMENT_STATUS_DECLINED (card_declined)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("dead letters: 0 with correlation id {shared}")),
        "{text}"
    );
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let users = report["users"].as_array().expect("users");
    assert_eq!(users.len(), 2, "{json}");
    assert_eq!(users[0]["user_id"], ada.user_id.as_str());
    assert_eq!(users[1]["user_id"], bob.user_id.as_str());
    assert_eq!(report["dead_letters"]["status"], "complete", "{json}");
    // By user id, only that user's flow.
    assert!(
        one.contains(&format!(
            "user {} (1 of 1, correlation id {shared})",
            bob.user_id
        )),
        "{one}"
    );
    assert!(!one.contains(&ada.user_id), "{one}");
}

#[tokio::test]
async fn a_flaky_charge_is_one_payment_whose_retries_show_as_its_time_and_are_named_where_seen() {
    // Arrange: the gateway fails the charge twice, transiently, then succeeds.
    let services = spawn_services().await;
    let flow = request_id();
    let user = services.create_user("ada+flaky@example.com", &flow).await;
    let order = services.order_once(&user, OrderStatus::Paid).await;

    // Act
    let text = traced(&services.trace(&[&flow, "--json"]).await);

    // Assert: one payment, no dead letter; the charge took at least the two retry delays
    // (100 ms and 200 ms: a retried message waits that long in its retry queue), and the
    // trace says the attempts themselves are not recorded and where they are seen.
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let timeline = report["users"][0]["timeline"].as_array().expect("steps");
    let at = |event: &str| {
        let step = timeline
            .iter()
            .find(|step| step["event"].as_str().is_some_and(|e| e.contains(event)))
            .unwrap_or_else(|| panic!("no step {event:?}: {text}"));
        chrono::DateTime::parse_from_rfc3339(step["time"].as_str().expect("a time"))
            .expect("RFC 3339")
    };
    let charged = at("PAYMENT_STATUS_SUCCEEDED") - at("PROCESSING (intent recorded)");
    assert!(charged.num_milliseconds() >= 300, "{text}");
    at(&format!("order {} ORDER_STATUS_PAID", order.order_id));
    assert_eq!(report["users"][0]["dead_letters"], serde_json::json!([]));
    assert!(
        report["retries"]
            .as_str()
            .is_some_and(|r| r.contains("do not record retried attempts")),
        "{text}"
    );
}

#[tokio::test]
async fn a_dead_lettered_flow_shows_its_dead_letter_in_its_timeline_and_leaves_it_queued() {
    // Arrange: the gateway fails two users' charges permanently; their order_created events
    // are dead-lettered.
    let services = spawn_services().await;
    let amqp = test_support::broker().await;
    let dlq = services
        .sandbox
        .topology
        .dead_letter_queue(&PAYMENT_SERVICE_ORDER_CREATED);
    let flow = request_id();
    let user = services.create_user("ada+fail@example.com", &flow).await;
    services
        .create_user("bob+fail@example.com", &request_id())
        .await;
    test_support::eventually(|| async { queue_depth(&amqp, &dlq).await == 2 }).await;

    // Act
    let text = traced(&services.trace(&[&user.user_id]).await);
    let bounded = traced(&services.trace(&[&flow, "--dlq-scan-limit", "1"]).await);

    // Assert: the dead letter is a step of the flow, after the payment's intent, with its
    // queue, failure kind, attempts and reason; the other flow's is not shown.
    let intent = line_of(&text, "PROCESSING (intent recorded)");
    let dead = line_of(
        &text,
        &format!(
            "in {dlq}: order.v1.OrderCreated, permanent after 1 attempt(s): payment gateway \
             failed permanently: simulated processing error"
        ),
    );
    assert!(intent < dead, "{text}");
    assert!(
        text.contains(&format!(
            "dead letters: 1 with correlation id {flow}, of 2 read in 3 dead-letter queue(s)"
        )),
        "{text}"
    );
    assert!(text.contains("eventsctl dlq replay --message-id"), "{text}");
    assert!(
        bounded.contains(&format!(
            "dead letters: scan partial: {dlq} holds 2, only the first 1 were read"
        )),
        "{bounded}"
    );
    // Read, not consumed: both are back in the queue a moment later.
    test_support::eventually(|| async { queue_depth(&amqp, &dlq).await == 2 }).await;
}

#[tokio::test]
async fn no_user_is_an_error_and_a_missing_queue_or_broker_leaves_the_rest_of_the_trace() {
    // Arrange
    let services = spawn_services().await;
    let flow = request_id();
    let user = services.create_user("ada@example.com", &flow).await;
    services.order_once(&user, OrderStatus::Paid).await;
    let port = test_support::unused_port();

    // Act
    let nobody = services.trace(&["nobody-has-this-id"]).await;
    let elsewhere = services
        .trace_on(&test_support::broker_url(), "another_namespace", &[&flow])
        .await;
    let unreachable = services
        .trace_on(
            &test_support::broker_url_at(port),
            services.sandbox.topology.namespace().as_str(),
            &[&flow],
        )
        .await;

    // Assert: no user is an error (exit 1); a dead-letter queue that does not exist is
    // skipped; an unreachable broker makes the dead letters unknown, the flow still drawn.
    assert_eq!(nobody.status.code(), Some(1));
    assert!(
        stderr(&nobody).contains("no user has the id or the correlation id \"nobody-has-this-id\""),
        "{}",
        stderr(&nobody)
    );
    let skipped = traced(&elsewhere);
    assert!(
        skipped.contains(
            "another_namespace.payment_service.order_created.dlq does not exist, skipped"
        ),
        "{skipped}"
    );
    assert!(skipped.contains("ORDER_STATUS_PAID"), "{skipped}");
    let unknown = traced(&unreachable);
    assert!(
        unknown.contains(&format!(
            "dead letters unknown: cannot reach RabbitMQ at 127.0.0.1:{port}"
        )),
        "{unknown}"
    );
    assert!(unknown.contains("ORDER_STATUS_PAID"), "{unknown}");
}
