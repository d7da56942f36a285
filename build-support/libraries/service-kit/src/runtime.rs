//! What runs inside every service besides its own API: the database pool, the supervised bus,
//! the outbox relay, the inbox retention, health and reflection, and the gRPC server, with one
//! shutdown path.
//!
//! [`ServiceRuntime::start`] binds the listener (port 0 in tests) and starts the background work,
//! the periodic activity summary among it (see [`messaging::activity`]);
//! [`ServiceRuntime::serve`] serves the service's routes until the shutdown future resolves, then
//! drains in order: gRPC calls and the relay's batch, then the broker connection, then the pool.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use messaging::{
    Activity, Bus, BusSettings, ConsumerTuning, Dispatcher, EventConsumer, Handler, InboxRetention,
    OutboxRelay,
    topology::{Consumes, Subscription},
};
use sqlx::{PgPool, migrate::Migrator};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{service::Routes, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_http::request_id::MakeRequestUuid;

use crate::{
    database,
    grpc_limits::{GrpcLimits, InFlightLimitLayer, LimitStatusLayer, MessageSizeLimitLayer},
    metrics::{self, KnownMethods},
    queue_gauges, readiness,
    settings::Settings,
};

/// How long in-flight calls and background work get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker connection gets to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A started service, not yet serving gRPC.
#[derive(Debug)]
pub struct ServiceRuntime {
    /// The service's own database, migrated.
    pub pool: PgPool,
    /// The supervised broker connection.
    pub bus: Bus,
    /// Hands committed outbox rows to the relay (see `messaging::outbox::dispatch`).
    pub dispatcher: Dispatcher,
    /// What the service did since its last summary line: the consumers count in it, and so
    /// may the service's API.
    pub activity: Activity,
    /// Whether the database answers.
    database_up: watch::Receiver<bool>,
    metrics_addr: SocketAddr,
    consumer: ConsumerTuning,
    service_name: &'static str,
    grpc_limits: GrpcLimits,
    known_methods: KnownMethods,
    listener: TcpListener,
    health: HealthReporter,
    routes: Routes,
    workers: TaskTracker,
    stop: CancellationToken,
    bus_task: TaskTracker,
    bus_stop: CancellationToken,
}

impl ServiceRuntime {
    /// Creates and migrates the database, starts the bus and the outbox relay, binds the gRPC
    /// listener, and installs health (NOT_SERVING until the broker topology is declared) and
    /// reflection for `grpc_service`, the full name of the service's gRPC service. `consumes`
    /// lists the queues the service will consume; their consumers' inbox rows are deleted after
    /// `INBOX_RETENTION`.
    pub async fn start(
        settings: &Settings,
        migrator: Migrator,
        grpc_service: &'static str,
        consumes: &[Subscription],
    ) -> anyhow::Result<Self> {
        let pool = database::connect_and_migrate(
            &settings.database_url,
            settings.database_pool_size,
            migrator,
        )
        .await?;

        let bus_task = TaskTracker::new();
        let bus_stop = CancellationToken::new();
        let bus = Bus::start(
            BusSettings {
                addresses: settings.amqp_url.clone(),
                topology: settings.topology.clone(),
                app_id: settings.service_name.to_owned(),
                owned: consumes.to_vec(),
                heartbeat: settings.amqp_heartbeat,
                trusted_producers: settings.trusted_producers.clone(),
            },
            &bus_task,
            bus_stop.clone(),
        );

        let workers = TaskTracker::new();
        let stop = CancellationToken::new();
        let relay = OutboxRelay::new(pool.clone(), bus.clone());
        let dispatcher = relay.dispatcher();
        workers.spawn(relay.run(stop.clone()));
        let inbox_retention = InboxRetention::new(
            pool.clone(),
            consumes.iter().map(|subscription| subscription.consumer),
            settings.inbox_retention,
        );
        workers.spawn(inbox_retention.run(stop.clone()));
        let (database_up, database_watch) = database::watch_health(pool.clone(), stop.clone());
        workers.spawn(database_watch);
        let (outbox_fresh, outbox_watch) = readiness::watch_outbox(
            pool.clone(),
            settings.service_name,
            settings.outbox_max_age,
            stop.clone(),
        );
        workers.spawn(outbox_watch);
        let metrics_listener = metrics::bind(settings.metrics_addr).await?;
        let metrics_addr = metrics_listener.local_addr()?;
        workers.spawn(metrics::serve(
            metrics_listener,
            pool.clone(),
            settings.service_name,
            stop.clone(),
        ));
        workers.spawn(queue_gauges::watch(
            bus.clone(),
            settings.service_name,
            consumes.to_vec(),
            stop.clone(),
        ));
        let activity = Activity::default();
        workers.spawn(messaging::activity::report(
            activity.clone(),
            settings.log_summary_interval,
            stop.clone(),
        ));

        let (health, health_service) = tonic_health::server::health_reporter();
        for name in ["", grpc_service] {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        workers.spawn(readiness::report(
            bus.watch(),
            bus.watch_responsive(),
            database_up.clone(),
            outbox_fresh,
            health.clone(),
            grpc_service,
            stop.clone(),
        ));

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // So clients can decode the google.rpc.BadRequest of INVALID_ARGUMENT errors.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(grpc_service)
                .with_service_name("grpc.health.v1.Health")
        };
        let known_methods = KnownMethods::of(
            &[
                grpc_service,
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ],
            &[
                proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
        )
        .context("the descriptor sets of the served methods")?;
        let routes = Routes::new(health_service)
            .add_service(reflection().build_v1().context("reflection v1")?)
            .add_service(reflection().build_v1alpha().context("reflection v1alpha")?);

        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.grpc_addr))?;

        Ok(Self {
            pool,
            bus,
            dispatcher,
            activity,
            database_up,
            metrics_addr,
            consumer: settings.consumer,
            service_name: settings.service_name,
            grpc_limits: settings.grpc,
            known_methods,
            listener,
            health,
            routes,
            workers,
            stop,
            bus_task,
            bus_stop,
        })
    }

    /// The address the gRPC server listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the `/metrics` endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// An interceptor for the service's own API: `UNAVAILABLE` at once while the database is
    /// down.
    pub fn database_gate(&self) -> database::DatabaseGate {
        database::DatabaseGate::new(self.database_up.clone())
    }

    /// Runs `task` as background work that shutdown waits for; it should return once `stop` is
    /// cancelled.
    pub fn spawn_worker<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.workers.spawn(task(self.stop.clone()));
    }

    /// Consumes `queue` with `handler` (a handler of the queue's event only), with the
    /// configured retries, pausing while the database is unreachable.
    pub fn spawn_consumer<H: Handler>(&self, queue: Consumes<H::Event>, handler: H) {
        let consumer = EventConsumer::new(queue, self.pool.clone(), self.bus.clone(), handler)
            .with_tuning(self.consumer)
            .with_gate(self.database_up.clone())
            .with_dispatcher(self.dispatcher.clone())
            .with_activity(self.activity.clone());
        self.spawn_worker(|stop| consumer.run(stop));
    }

    /// The application serving the service's own API, which `add_services` adds beside health
    /// and reflection.
    pub fn into_application(
        self,
        add_services: impl FnOnce(Routes) -> Routes + Send + 'static,
    ) -> std::io::Result<Application> {
        Ok(Application {
            local_addr: self.local_addr()?,
            runtime: self,
            add_services: Box::new(add_services),
        })
    }

    /// Serves health, reflection and the services `add_services` adds (the service's own API)
    /// until `shutdown` resolves, then drains and closes everything, each step bounded in time.
    async fn serve(
        self,
        add_services: Box<AddServices>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            pool,
            bus: _,
            dispatcher,
            activity: _,
            database_up: _,
            metrics_addr: _,
            consumer: _,
            service_name,
            grpc_limits,
            known_methods,
            listener,
            health,
            routes,
            workers,
            stop,
            bus_task,
            bus_stop,
        } = self;
        // The relay publishes what is dispatched after the stop until its last dispatcher is
        // gone: the consumers and the API hold theirs.
        drop(dispatcher);
        let routes = add_services(routes).prepare();

        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(grpc_limits.keepalive_interval))
            .http2_keepalive_timeout(Some(grpc_limits.keepalive_timeout))
            .layer(
                tower::ServiceBuilder::new()
                    .layer(metrics::GrpcMetricsLayer::new(service_name, known_methods))
                    // Inside the metrics layer, so shed and timed-out calls are counted with
                    // their status. Shedding comes first, so a refused call costs next to nothing;
                    // one semaphore for all connections: the limit is the server's.
                    .layer(InFlightLimitLayer::new(grpc_limits.concurrency_limit))
                    .layer(LimitStatusLayer)
                    .layer(tower::timeout::TimeoutLayer::new(
                        grpc_limits.request_timeout,
                    ))
                    // Before the request-id layers, so they keep and echo the replacement.
                    .map_request(crate::request_context::replace_invalid_request_id)
                    .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
                        MakeRequestUuid,
                    ))
                    .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
                    // Inside the request-id layer, so the span sees the (generated) id.
                    .layer(crate::request_context::TraceContextLayer)
                    .layer(MessageSizeLimitLayer {
                        max_bytes: grpc_limits.max_message_bytes,
                    }),
            )
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                // Small responses go out at once instead of waiting on Nagle's algorithm.
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop.clone().cancelled_owned(),
            );
        let mut server = tokio::spawn(server);

        tokio::select! {
            ended = &mut server => {
                stop.cancel();
                ended.context("the gRPC server task panicked")?.context("the gRPC server failed")?;
            }
            _ = shutdown => {
                stop.cancel();
                health.set_service_status("", ServingStatus::NotServing).await;
                match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                    Ok(ended) => ended.context("the gRPC server task panicked")?.context("the gRPC server failed")?,
                    Err(_) => {
                        tracing::warn!("gRPC calls still running after {DRAIN_TIMEOUT:?}; dropping them");
                        server.abort();
                    }
                }
            }
        }

        workers.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, workers.wait())
            .await
            .is_err()
        {
            tracing::warn!("background work still running after {DRAIN_TIMEOUT:?}");
        }
        bus_stop.cancel();
        bus_task.close();
        if tokio::time::timeout(CLOSE_TIMEOUT, bus_task.wait())
            .await
            .is_err()
        {
            tracing::warn!("the broker connection did not close within {CLOSE_TIMEOUT:?}");
        }
        pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Adds a service's own gRPC services to the routes.
type AddServices = dyn FnOnce(Routes) -> Routes + Send;

/// A built service: migrated, connected (or connecting), its background work running, its
/// listener bound. `main` and the tests both run it with [`Application::run_until_stopped`].
pub struct Application {
    runtime: ServiceRuntime,
    local_addr: SocketAddr,
    add_services: Box<AddServices>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("runtime", &self.runtime)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Where the gRPC server listens (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the `/metrics` endpoint listens.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.runtime.metrics_addr
    }

    /// Serves until `shutdown` resolves, then drains and stops.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr, "listening");
        self.runtime.serve(self.add_services, shutdown).await
    }
}
