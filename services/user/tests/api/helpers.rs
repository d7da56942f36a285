//! `spawn_app`: the user service on port 0 with its own database and bus namespace, a gRPC
//! client, and a view on the broker and the database to assert on. Dropping the `TestApp`
//! stops the service, drops the database and deletes the namespace's exchanges and queues.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use messaging::{Namespace, Topology};
use proto::user::v1::{
    CreateUserRequest, CreateUserResponse, user_service_client::UserServiceClient,
};
use secrecy::SecretString;
use service_kit::{Settings, settings::LogFormat};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use user_service::Application;
use uuid::Uuid;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(20);

fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The shared test broker.
pub fn broker_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A running user service and what a test needs around it.
pub struct TestApp {
    pub client: UserServiceClient<Channel>,
    /// The connection the clients share; build other clients (health, reflection) on it.
    pub channel: Channel,
    /// A pool on the service's own database.
    pub db: PgPool,
    pub topology: Topology,
    /// The test's own connection to the real broker.
    pub amqp: Connection,
    database: String,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The user service against the shared broker, ready (health SERVING) before it returns.
pub async fn spawn_app() -> TestApp {
    let app = spawn_app_with_broker(&broker_url()).await;
    app.wait_for_health(ServingStatus::Serving).await;
    app
}

/// The user service against `amqp_url`, which may not be reachable yet; does not wait for
/// readiness.
pub async fn spawn_app_with_broker(amqp_url: &str) -> TestApp {
    let suffix = Uuid::new_v4().simple().to_string();
    let database = format!("users_test_{suffix}");
    let namespace = format!("test_{suffix}");
    let topology = Topology::new(Namespace::parse(&namespace).expect("valid namespace"));
    let settings = Settings {
        service_name: "user-service",
        database_url: SecretString::from(format!("{}/{database}", postgres_server())),
        amqp_url: SecretString::from(amqp_url.to_owned()),
        grpc_addr: "127.0.0.1:0".parse().expect("valid address"),
        topology: topology.clone(),
        rust_log: "info".into(),
        log_format: LogFormat::Text,
    };

    let application = Application::build(&settings)
        .await
        .expect("the service starts");
    let addr = application.local_addr();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(application.run_until_stopped(shutdown.clone().cancelled_owned()));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .connect()
        .await
        .expect("the gRPC server accepts connections");
    let client = UserServiceClient::new(channel.clone());
    let db = PgPool::connect(&format!("{}/{database}", postgres_server()))
        .await
        .expect("the service created its database");
    let amqp = Connection::connect(&broker_url(), ConnectionProperties::default())
        .await
        .expect("the test broker is reachable");
    TestApp {
        client,
        channel,
        db,
        topology,
        amqp,
        database,
        shutdown,
        server: Some(server),
    }
}

impl TestApp {
    /// Calls CreateUser with `x-request-id` set.
    pub async fn create_user_with_request_id(
        &self,
        request: CreateUserRequest,
        request_id: &str,
    ) -> Result<tonic::Response<CreateUserResponse>, tonic::Status> {
        let mut request = tonic::Request::new(request);
        request
            .metadata_mut()
            .insert("x-request-id", request_id.parse().expect("ascii"));
        self.client.clone().create_user(request).await
    }

    /// Calls CreateUser with just an email and a name.
    pub async fn create_user(
        &self,
        email: &str,
        name: &str,
    ) -> Result<CreateUserResponse, tonic::Status> {
        self.client
            .clone()
            .create_user(CreateUserRequest {
                email: email.into(),
                name: name.into(),
                ..CreateUserRequest::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// The overall health the service reports.
    pub async fn health(&self) -> ServingStatus {
        let mut health = HealthClient::new(self.channel.clone());
        let response = health
            .check(HealthCheckRequest {
                service: "user.v1.UserService".into(),
            })
            .await
            .expect("health answers");
        response.into_inner().status()
    }

    /// Waits until health reports `status`.
    pub async fn wait_for_health(&self, status: ServingStatus) {
        eventually(|| async { self.health().await == status }).await;
    }

    /// A private queue bound to `routing_key` on the namespace's events exchange, declaring the
    /// topology first (as the service would), and a consumer on it.
    pub async fn capture(&self, routing_key: &str) -> Consumer {
        let channel = self.amqp.create_channel().await.expect("channel");
        self.topology.declare(&channel).await.expect("topology");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("capture queue");
        channel
            .queue_bind(
                queue.name().clone(),
                self.topology.exchange().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind capture queue");
        channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume")
    }

    /// Rows waiting in the service's outbox.
    pub async fn outbox_rows(&self) -> i64 {
        messaging::outbox::pending(&self.db)
            .await
            .expect("count outbox")
    }

    /// Rows in the users table.
    pub async fn user_rows(&self) -> i64 {
        sqlx::query_scalar("select count(*) from users")
            .fetch_one(&self.db)
            .await
            .expect("count users")
    }

    /// Stops the service as SIGTERM would, and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the service task ends")
                .expect("the service stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let database = self.database.clone();
        let topology = self.topology.clone();
        // Clean-up needs async I/O but Drop is sync: run it on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) =
                    PgConnection::connect(&format!("{}/postgres", postgres_server())).await
                {
                    let _ = sqlx::query(&format!(
                        "drop database if exists \"{database}\" with (force)"
                    ))
                    .execute(&mut admin)
                    .await;
                }
                if let Ok(amqp) =
                    Connection::connect(&broker_url(), ConnectionProperties::default()).await
                    && let Ok(channel) = amqp.create_channel().await
                {
                    let _ = topology.delete(&channel).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// The next message on `consumer`, acked; panics after [`PATIENCE`].
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("a message arrives in time")
        .expect("the consumer is open")
        .expect("the delivery is intact");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    delivery
}

/// Asserts that nothing more arrives on `consumer` within `wait`.
pub async fn assert_no_more_deliveries(consumer: &mut Consumer, wait: Duration) {
    if let Ok(Some(delivery)) = tokio::time::timeout(wait, consumer.next()).await {
        panic!("unexpected extra message: {delivery:?}");
    }
}

/// Polls `condition` until it holds; panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port on 127.0.0.1 that nothing listens on (yet).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Forwards `port` to the shared broker from now on: a broker "coming back" at the address the
/// service was given, without touching the shared broker.
pub async fn open_broker_proxy(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the reserved port is still free");
    let upstream = broker_address();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

fn broker_address() -> String {
    let url = broker_url();
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("an AMQP URL with a host");
    authority.rsplit('@').next().expect("host:port").to_owned()
}
