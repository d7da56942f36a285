//! Hostile messages: one hand-made message at a time, as an attacker with access to the broker
//! would send it, against the three service binaries (each a process of the test's own, on a
//! private RabbitMQ node where the test can add a broker user of its own, and fresh databases).
//!
//! Each case asserts where its message ended (its dead-letter queue, with the failure kind when
//! the consumer could say) and that every service process is still alive and SERVING. At the end:
//! no service reconnected to the broker, `/metrics` grew by a few kB at most, and a normal
//! CreateUser is PAID end to end. The gRPC side of the trust boundary is tested in each service's
//! `hostile` API tests.

// Helpers are shared between test modules of one binary; `pub` there is crate-wide anyway.
#![allow(unreachable_pub)]

use std::{path::PathBuf, time::Duration};

use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::QueuePurgeOptions,
    types::{AMQPValue, FieldArray, FieldTable, LongString},
};
use messaging::{
    Envelope, Publisher, Topology,
    limits::{MAX_FRAME_BYTES, deepest_nesting},
    retry::{ATTEMPTS_HEADER, FAILURE_KIND_HEADER, FAILURE_MESSAGE_HEADER, text_header},
    topology::{
        ORDER_SERVICE_PAYMENT_PROCESSED, ORDER_SERVICE_USER_CREATED, PAYMENT_SERVICE_ORDER_CREATED,
        SUBSCRIPTIONS, Subscription,
    },
};
use proto::{
    Event,
    order::v1::OrderCreated,
    payment::v1::{PaymentProcessed, PaymentStatus},
    user::v1::{CreateUserRequest, Plan, UserCreated, user_service_client::UserServiceClient},
};
use sqlx::PgPool;
use system_tests::processes::{Service, ServiceProcess, binaries};
use test_support::{
    PrivateBroker, Sandbox, eventually, eventually_some, new_context, poison, publish_raw,
    queue_depth, take_message,
};
use uuid::Uuid;

/// The broker user of the attacker, with every permission on the vhost: what the services must
/// not trust is what it publishes, not whether it can.
const MALLORY: &str = "mallory";
/// Long enough that a forged payment_processed arrives while the real charge is under way.
const GATEWAY_LATENCY: &str = "2s";
/// How much a service's `/metrics` may grow through the whole test: the series of the new
/// outcomes and failure kinds, and histogram buckets filling, not one series per message.
const METRICS_GROWTH_LIMIT: usize = 8 * 1024;

/// The stack and the test's two broker users' connections.
struct Hostile {
    services: Vec<ServiceProcess>,
    users: UserServiceClient<tonic::transport::Channel>,
    orders_db: PgPool,
    payments_db: PgPool,
    /// As the services (the trusted `guest`).
    amqp: Connection,
    /// As the attacker.
    mallory: Connection,
    topology: Topology,
    logs: PathBuf,
    /// Held for their clean-up when the test ends: the databases, then the node.
    _sandbox: Sandbox,
    _broker: PrivateBroker,
}

impl Hostile {
    async fn start() -> Self {
        let broker = PrivateBroker::start().await;
        broker.report(&["add_user", MALLORY, MALLORY]).await;
        broker
            .report(&["set_permissions", "-p", "/", MALLORY, ".*", ".*", ".*"])
            .await;
        let sandbox = Sandbox::new();
        let topology = sandbox.topology.clone();
        let logs = std::env::temp_dir().join(format!("hostile-{}", topology.namespace().as_str()));
        std::fs::create_dir_all(&logs).expect("a log folder");
        let bin = binaries();
        let mut services = Vec::new();
        for service in Service::ALL {
            let mut env = sandbox.service_env(service.database());
            env.extend([
                ("AMQP_URL", broker.url()),
                ("GATEWAY_LATENCY", GATEWAY_LATENCY.to_owned()),
                ("RUST_LOG", "info".into()),
                ("RUST_LIB_BACKTRACE", "0".into()),
            ]);
            let log = logs.join(format!("{}.log", service.binary()));
            services.push(ServiceProcess::spawn(service, &bin, env, log));
        }
        for process in &services {
            process.wait_until_serving().await;
        }
        let connect = |user: &str| {
            let url = format!("amqp://{user}:{user}@127.0.0.1:{}/%2f", broker.port());
            async move {
                Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .expect("the private broker takes the test's connection")
            }
        };
        let amqp = connect("guest").await;
        let mallory = connect(MALLORY).await;
        Self {
            users: UserServiceClient::new(services[0].channel()),
            orders_db: sandbox.pool(Service::Order.database()).await,
            payments_db: sandbox.pool(Service::Payment.database()).await,
            services,
            amqp,
            mallory,
            topology,
            logs,
            _sandbox: sandbox,
            _broker: broker,
        }
    }

    /// Every service process still runs and says SERVING.
    async fn assert_serving(&mut self, after: &str) {
        for process in &mut self.services {
            assert!(
                process.is_running(),
                "{} died after {after}; its log ends with:\n{}",
                process.service.binary(),
                process.log_tail(15)
            );
            process.wait_until_serving().await;
        }
    }

    /// Waits until `subscription`'s dead-letter queue holds `count` messages, then empties it.
    /// Counted without taking them (a hostile message is not read back here).
    async fn assert_dead_lettered(&self, subscription: &Subscription, count: u32, case: &str) {
        let dlq = self.topology.dead_letter_queue(subscription);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let depth = queue_depth(&self.amqp, &dlq).await;
            if depth == count {
                break;
            }
            assert!(
                depth < count && tokio::time::Instant::now() < deadline,
                "{case}: {dlq} holds {depth} messages, expected {count}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let channel = self.amqp.create_channel().await.expect("a channel");
        channel
            .queue_purge(dlq.as_str().into(), QueuePurgeOptions::default())
            .await
            .expect("purge");
        let _ = channel.close(200, "purged".into()).await;
    }

    /// The one dead letter of `subscription`'s queue: taken, and its failure kind.
    async fn take_dead_letter(&self, subscription: &Subscription) -> (String, String) {
        let dlq = self.topology.dead_letter_queue(subscription);
        let letter = eventually_some(|| take_message(&self.amqp, &dlq)).await;
        assert_eq!(queue_depth(&self.amqp, &dlq).await, 0, "one dead letter");
        (
            text_header(&letter.properties, FAILURE_KIND_HEADER).unwrap_or_default(),
            text_header(&letter.properties, FAILURE_MESSAGE_HEADER).unwrap_or_default(),
        )
    }

    /// Publishes as the attacker, who may publish anything; the broker checks only `user_id`.
    async fn publish_as_mallory(&self, envelope: &Envelope) {
        let publisher = Publisher::open(
            &self.mallory,
            self.topology.exchange(),
            "mallory".into(),
            MALLORY.into(),
        )
        .await
        .expect("a publisher");
        publisher
            .publish(envelope)
            .await
            .expect("the broker takes it");
    }

    async fn metrics_sizes(&self) -> Vec<usize> {
        let mut sizes = Vec::new();
        for process in &self.services {
            sizes.push(
                test_support::http_get(process.metrics_addr(), "/metrics")
                    .await
                    .len(),
            );
        }
        sizes
    }

    /// Creates a user and waits until its order is PAID; returns the user and order ids.
    async fn paid_flow(&self, email: &str) -> (Uuid, Uuid) {
        let (user_id, order_id) = self.order_of(email).await;
        eventually(|| async { self.order_status(order_id).await == "paid" }).await;
        (user_id, order_id)
    }

    /// Creates a user and returns it with its order (as soon as there is one).
    async fn order_of(&self, email: &str) -> (Uuid, Uuid) {
        let user = self
            .users
            .clone()
            .create_user(CreateUserRequest {
                email: email.into(),
                name: "Ada".into(),
                plan: Plan::Pro.into(),
                request_id: Uuid::new_v4().to_string(),
            })
            .await
            .expect("created")
            .into_inner()
            .user
            .expect("a user");
        let user_id: Uuid = user.user_id.parse().expect("a UUID");
        let order_id = eventually_some(|| async {
            sqlx::query_scalar::<_, Uuid>("select order_id from orders where user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.orders_db)
                .await
                .expect("query")
        })
        .await;
        (user_id, order_id)
    }

    async fn order_status(&self, order_id: Uuid) -> String {
        sqlx::query_scalar("select status from orders where order_id = $1")
            .bind(order_id)
            .fetch_one(&self.orders_db)
            .await
            .expect("the order")
    }

    /// How often the gateway was called for `order_id`.
    async fn charge_calls(&self, order_id: Uuid) -> i64 {
        payment_service::gateway::simulated_charges(&self.payments_db, order_id)
            .await
            .expect("query")
            .calls
    }

    /// How many times each service connected to the broker, from its log.
    fn connections_made(&self) -> Vec<(Service, usize)> {
        self.services
            .iter()
            .map(|process| {
                let log = std::fs::read_to_string(
                    self.logs.join(format!("{}.log", process.service.binary())),
                )
                .unwrap_or_default();
                (
                    process.service,
                    log.matches("connected to RabbitMQ").count(),
                )
            })
            .collect()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        } else {
            eprintln!("the services' logs are kept in {}", self.logs.display());
        }
    }
}

/// Field arrays nested `depth` levels deep, built without recursion.
fn nested(depth: usize) -> AMQPValue {
    let mut value = AMQPValue::FieldArray(FieldArray::default());
    for _ in 1..depth {
        value = AMQPValue::FieldArray(FieldArray::from(vec![value]));
    }
    value
}

fn with_header(name: &str, value: AMQPValue) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(name.into(), value);
    BasicProperties::default().with_headers(headers)
}

fn user_created() -> Envelope {
    let event = UserCreated {
        user_id: Uuid::new_v4().to_string(),
        email: format!("{}@example.com", Uuid::new_v4().simple()),
        name: "Eve".into(),
        plan: Plan::Basic.into(),
        ..UserCreated::default()
    };
    Envelope::new(&event, &new_context())
}

fn order_created(email: &str) -> Envelope {
    let event = OrderCreated {
        order_id: Uuid::now_v7().to_string(),
        user_id: Uuid::new_v4().to_string(),
        user_email: email.into(),
        plan: Plan::Pro.into(),
        amount_minor: 4_900,
        currency: "EUR".into(),
        ..OrderCreated::default()
    };
    Envelope::new(&event, &new_context())
}

#[tokio::test]
async fn hostile_messages_end_in_dead_letter_queues_and_every_service_keeps_serving() {
    let mut stack = Hostile::start().await;
    // Every series a normal flow makes exists before the baseline is taken.
    stack.paid_flow("warm-up@example.com").await;
    let metrics_before = stack.metrics_sizes().await;
    let topology = stack.topology.clone();

    // The ordinary poison, on every queue.
    for subscription in SUBSCRIPTIONS {
        let type_name = match subscription.routing_key {
            "user_created" => UserCreated::TYPE_NAME,
            "order_created" => OrderCreated::TYPE_NAME,
            _ => PaymentProcessed::TYPE_NAME,
        };
        let cases = poison(type_name);
        let count = u32::try_from(cases.len()).expect("a few");
        for (_, payload, properties) in cases {
            publish_raw(
                &stack.amqp,
                &topology,
                subscription.routing_key,
                &payload,
                properties,
            )
            .await;
        }
        stack
            .assert_dead_lettered(subscription, count, "ordinary poison")
            .await;
        stack.assert_serving("ordinary poison").await;
    }

    // 1. Headers nested as deep as a frame of the negotiated size can carry: decoding them
    // recurses on the AMQP library's I/O thread. The message has nothing but its headers.
    let depth = deepest_nesting(MAX_FRAME_BYTES);
    for subscription in SUBSCRIPTIONS {
        publish_raw(
            &stack.amqp,
            &topology,
            subscription.routing_key,
            b"",
            with_header("x", nested(depth)),
        )
        .await;
        let case = format!("headers nested {depth} levels deep");
        stack.assert_dead_lettered(subscription, 1, &case).await;
        stack.assert_serving(&case).await;
    }

    // 2. A header table just under frame_max, on an otherwise valid, trusted event: forwarding
    // it with the failure headers would exceed frame_max and cost the connection.
    let padding = MAX_FRAME_BYTES as usize - 2_048;
    let mut big = user_created();
    big.payload = b"\xff\xff".to_vec(); // and it does not decode
    let properties = big
        .properties("hostile")
        .with_user_id(test_support::broker_user().into())
        .with_headers({
            let mut headers = FieldTable::default();
            headers.insert(
                "padding".into(),
                AMQPValue::LongString(LongString::from("x".repeat(padding))),
            );
            headers
        });
    publish_raw(
        &stack.amqp,
        &topology,
        "user_created",
        &big.payload,
        properties,
    )
    .await;
    stack
        .assert_dead_lettered(
            &ORDER_SERVICE_USER_CREATED,
            1,
            "headers just under frame_max",
        )
        .await;
    stack.assert_serving("headers just under frame_max").await;

    // 3. Forged events. A payment_processed for an order whose charge is under way: the order
    // stays pending until the real one arrives.
    let (user_id, order_id) = stack.order_of("victim@example.com").await;
    let forged = PaymentProcessed {
        payment_id: Uuid::new_v4().to_string(),
        order_id: order_id.to_string(),
        user_id: user_id.to_string(),
        status: PaymentStatus::Succeeded.into(),
        amount_minor: 1,
        currency: "EUR".into(),
        ..PaymentProcessed::default()
    };
    stack
        .publish_as_mallory(&Envelope::new(&forged, &new_context()))
        .await;
    let (kind, message) = stack
        .take_dead_letter(&ORDER_SERVICE_PAYMENT_PROCESSED)
        .await;
    assert_eq!(kind, "untrusted", "{message}");
    assert!(message.contains(MALLORY), "{message}");
    assert_eq!(stack.order_status(order_id).await, "pending_payment");
    eventually(|| async { stack.order_status(order_id).await == "paid" }).await;
    assert_eq!(stack.charge_calls(order_id).await, 1);

    // An order_created for someone else's e-mail is never charged.
    let forged = order_created("someone-else@example.com");
    let forged_order: Uuid = forged_order_id(&forged);
    stack.publish_as_mallory(&forged).await;
    let (kind, _) = stack.take_dead_letter(&PAYMENT_SERVICE_ORDER_CREATED).await;
    assert_eq!(kind, "untrusted");
    assert_eq!(stack.charge_calls(forged_order).await, 0);

    // Without a user_id, nobody vouches for it.
    let anonymous = user_created();
    publish_raw(
        &stack.amqp,
        &topology,
        "user_created",
        &anonymous.payload,
        anonymous.properties("anonymous"),
    )
    .await;
    let (kind, _) = stack.take_dead_letter(&ORDER_SERVICE_USER_CREATED).await;
    assert_eq!(kind, "untrusted");

    // And the attacker cannot claim to be the trusted user: the broker refuses the publish.
    let impersonating = Publisher::open(
        &stack.mallory,
        topology.exchange(),
        "mallory".into(),
        test_support::broker_user(),
    )
    .await
    .expect("a publisher");
    assert!(impersonating.publish(&user_created()).await.is_err());
    stack.assert_serving("forged events").await;

    // 4. An attempts header at the top of its range, on a charge that fails transiently: it is
    // the last attempt (dead-lettered when it fails), never a wrap back to the first.
    for attempts in [i64::from(u32::MAX), i64::MAX] {
        let flaky = order_created(&format!("{}+flaky@example.com", Uuid::new_v4().simple()));
        let mut properties = flaky
            .properties("order-service")
            .with_user_id(test_support::broker_user().into());
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(attempts));
        properties = properties.with_headers(headers);
        publish_raw(
            &stack.amqp,
            &topology,
            "order_created",
            &flaky.payload,
            properties,
        )
        .await;
        let (kind, _) = stack.take_dead_letter(&PAYMENT_SERVICE_ORDER_CREATED).await;
        assert_eq!(kind, "retries_exhausted", "attempts = {attempts}");
        assert_eq!(stack.charge_calls(forged_order_id(&flaky)).await, 1);
        stack
            .assert_serving(&format!("attempts = {attempts}"))
            .await;
    }

    // Afterwards: nobody reconnected, metrics did not grow with the messages, and a normal
    // CreateUser is PAID end to end.
    stack.paid_flow("after@example.com").await;
    for (service, connections) in stack.connections_made() {
        assert_eq!(
            connections,
            1,
            "{} connected to the broker {connections} times",
            service.binary()
        );
    }
    let metrics_after = stack.metrics_sizes().await;
    for ((process, before), after) in stack.services.iter().zip(metrics_before).zip(metrics_after) {
        assert!(
            after <= before + METRICS_GROWTH_LIMIT,
            "{}'s /metrics grew from {before} to {after} bytes",
            process.service.binary()
        );
    }
}

fn forged_order_id(envelope: &Envelope) -> Uuid {
    let event = <OrderCreated as prost::Message>::decode(envelope.payload.as_slice())
        .expect("an order_created");
    event.order_id.parse().expect("a UUID")
}
