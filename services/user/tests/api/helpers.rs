//! `spawn_app`: the user service on port 0 in a fresh [`Sandbox`], a gRPC client, and a view on
//! the broker and the database to assert on. Dropping the `TestApp` stops the service and
//! removes its database and bus namespace.

use lapin::{Connection, Consumer};
use messaging::{Bus, BusSettings, Dispatcher, OutboxRelay, Topology};
use proto::user::v1::{
    CreateUserRequest, CreateUserResponse, user_service_client::UserServiceClient,
};
use service_kit::Settings;
use sqlx::PgPool;
use test_support::{Running, Sandbox};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use user_service::settings::Ingress;

/// A running user service and what a test needs around it.
pub struct TestApp {
    /// Where the service serves `/metrics`.
    pub metrics_addr: std::net::SocketAddr,
    /// Where the service serves gRPC.
    pub grpc_addr: std::net::SocketAddr,
    pub client: UserServiceClient<Channel>,
    /// The connection the clients share; build other clients (health, reflection) on it.
    pub channel: Channel,
    /// A pool on the service's own database.
    pub db: PgPool,
    /// The test's own connection to the real broker.
    pub amqp: Connection,
    service: Running,
    // Last, so the service stops before its database and namespace go.
    sandbox: Sandbox,
}

/// The user service against the shared broker, ready (health SERVING) before it returns.
pub async fn spawn_app() -> TestApp {
    let app = spawn_app_with_broker(&test_support::broker_url()).await;
    app.service.wait_for_health(ServingStatus::Serving).await;
    app
}

/// The user service against `amqp_url`, which may not be reachable yet; does not wait for
/// readiness.
pub async fn spawn_app_with_broker(amqp_url: &str) -> TestApp {
    spawn_app_with(amqp_url, |_| {}).await
}

/// The user service against `amqp_url` with settings adjusted by `adjust`; does not wait for
/// readiness.
pub async fn spawn_app_with(amqp_url: &str, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_in(Sandbox::new(), amqp_url, adjust).await
}

/// The user service against `amqp_url`, taking calls as `ingress` says, ready (health SERVING)
/// before it returns.
pub async fn spawn_app_with_ingress(amqp_url: &str, ingress: Ingress) -> TestApp {
    let app = spawn_app_as(Sandbox::new(), amqp_url, |_| {}, ingress).await;
    app.service.wait_for_health(ServingStatus::Serving).await;
    app
}

/// The user service in `sandbox` (whose Postgres it uses) against `amqp_url`, with settings
/// adjusted by `adjust`; does not wait for readiness.
pub async fn spawn_app_in(
    sandbox: Sandbox,
    amqp_url: &str,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn_app_as(sandbox, amqp_url, adjust, Ingress::default()).await
}

async fn spawn_app_as(
    sandbox: Sandbox,
    amqp_url: &str,
    adjust: impl FnOnce(&mut Settings),
    ingress: Ingress,
) -> TestApp {
    let mut settings = sandbox.settings("user-service", "users", amqp_url);
    adjust(&mut settings);
    let application = user_service::build(&settings, ingress)
        .await
        .expect("the service starts");
    let application_metrics_addr = application.metrics_addr();
    let application_grpc_addr = application.local_addr();
    let service = Running::start(application, user_service::startup::GRPC_SERVICE).await;
    TestApp {
        metrics_addr: application_metrics_addr,
        grpc_addr: application_grpc_addr,
        client: UserServiceClient::new(service.channel.clone()),
        channel: service.channel.clone(),
        db: sandbox.pool("users").await,
        amqp: test_support::broker().await,
        service,
        sandbox,
    }
}

impl TestApp {
    /// The topology of the service's bus namespace.
    pub fn topology(&self) -> &Topology {
        &self.sandbox.topology
    }

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

    /// The health the service reports for `user.v1.UserService`.
    pub async fn health(&self) -> ServingStatus {
        self.service.health().await
    }

    /// Waits until health reports `status`.
    pub async fn wait_for_health(&self, status: ServingStatus) {
        self.service.wait_for_health(status).await;
    }

    /// A private queue receiving every event published with `routing_key`.
    pub async fn capture(&self, routing_key: &str) -> Consumer {
        test_support::capture(&self.amqp, self.topology(), routing_key).await
    }

    /// Binds (`true`) or unbinds (`false`) the order service's queue to `user_created`, the only
    /// route of that event in the namespace: unbound, the broker returns every `user_created`.
    pub async fn route_user_created(&self, routed: bool) {
        use lapin::{options::QueueBindOptions, types::FieldTable};
        let channel = self.amqp.create_channel().await.expect("channel");
        let queue = self
            .topology()
            .queue(&messaging::topology::ORDER_SERVICE_USER_CREATED);
        let exchange = self.topology().exchange();
        if routed {
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    "user_created".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind");
        } else {
            channel
                .queue_unbind(
                    queue.into(),
                    exchange.into(),
                    "user_created".into(),
                    FieldTable::default(),
                )
                .await
                .expect("unbind");
        }
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
    pub async fn stop(self) {
        self.service.stop().await;
    }
}

/// A relay of the app's outbox on the shared broker, as another process would run it.
pub struct Relay {
    tracker: TaskTracker,
    relay: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    bus_stop: CancellationToken,
    pub dispatcher: Dispatcher,
}

impl Relay {
    pub fn start(app: &TestApp, adjust: impl FnOnce(OutboxRelay) -> OutboxRelay) -> Self {
        let (tracker, stop, bus_stop) = (
            TaskTracker::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let bus = Bus::start(
            BusSettings {
                addresses: messaging::BrokerAddresses::parse(&test_support::broker_url())
                    .expect("a valid URL"),
                topology: app.topology().clone(),
                app_id: "user-service".into(),
                owned: Vec::new(),
                heartbeat: messaging::connection::DEFAULT_HEARTBEAT,
                trusted_producers: Default::default(),
            },
            &tracker,
            bus_stop.clone(),
        );
        let relay = adjust(OutboxRelay::new(app.db.clone(), bus));
        let dispatcher = relay.dispatcher();
        let relay = tokio::spawn(relay.run(stop.clone()));
        Self {
            tracker,
            relay,
            stop,
            bus_stop,
            dispatcher,
        }
    }

    /// Stops the relay, then its broker connection, as a service does: the relay's last
    /// publishes get their confirms before the connection closes.
    pub async fn stop(self) {
        let Self {
            tracker,
            relay,
            stop,
            bus_stop,
            dispatcher,
        } = self;
        // The relay finishes once its last dispatcher is gone.
        drop(dispatcher);
        stop.cancel();
        relay.await.expect("the relay ends");
        bus_stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
