//! Prometheus metrics: the process-wide recorder, the `/metrics` endpoint on `METRICS_ADDR`, and
//! the tower layer that counts and times every gRPC call.
//!
//! Labels take a bounded set of values, so no client can grow `/metrics`: the `method` of a gRPC
//! call is its path only when the server serves it ([`KnownMethods`]), `unknown` otherwise.
//!
//! Every metric the services export is in [`CATALOGUE`], with its `# HELP` text (durations in
//! seconds), plus the standard `process_*` metrics of each process (CPU, memory, open file
//! descriptors, threads), refreshed on every scrape.

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use prost::Message as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Histogram buckets for every `*_seconds` metric: 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric the services export: its name, kind and `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, help: &'static str) -> Described {
    Described { name, kind, help }
}

/// Every metric of the services (the `process_*` metrics aside), whichever code records it.
pub const CATALOGUE: &[Described] = &[
    metric(
        "grpc_server_requests_total",
        Kind::Counter,
        "gRPC calls by method and status code; a path the service does not serve is method=\"unknown\"",
    ),
    metric(
        "grpc_server_request_duration_seconds",
        Kind::Histogram,
        "gRPC call latency by method",
    ),
    metric(
        "events_published_total",
        Kind::Counter,
        "Events published from the outbox (dispatched or relayed), by type and outcome (acked, failed)",
    ),
    metric(
        "events_consumed_total",
        Kind::Counter,
        "Deliveries by consumer, type and outcome (applied, duplicate, retried, dead_lettered, requeued, undecodable)",
    ),
    metric(
        "dead_letters_total",
        Kind::Counter,
        "Messages a consumer sent to its dead-letter queue, by kind of failure",
    ),
    metric(
        "event_handler_duration_seconds",
        Kind::Histogram,
        "Handler transaction latency by consumer and event type",
    ),
    metric(
        "event_end_to_end_age_seconds",
        Kind::Histogram,
        "Age of an event when applied, from its time-ordered message_id",
    ),
    metric(
        "order_settlement_seconds",
        Kind::Histogram,
        "Time from an order's creation (its time-ordered order_id) to its settlement, by status",
    ),
    metric(
        "consumer_batch_size",
        Kind::Histogram,
        "Deliveries a consumer applied per transaction",
    ),
    metric(
        "outbox_pending_rows",
        Kind::Gauge,
        "Rows waiting in the service's outbox",
    ),
    metric(
        "outbox_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest row waiting in the service's outbox",
    ),
    metric(
        "outbox_dispatch_deferred_total",
        Kind::Counter,
        "Committed outbox rows left to their lease because the publisher was too far behind",
    ),
    metric(
        "outbox_published_twice_total",
        Kind::Counter,
        "Outbox rows published by both their dispatch and a relay (harmless: one message_id)",
    ),
    metric(
        "inbox_rows_deleted_total",
        Kind::Counter,
        "Inbox rows deleted past INBOX_RETENTION, by consumer",
    ),
    metric(
        "queue_messages_ready",
        Kind::Gauge,
        "Messages ready in the service's work and dead-letter queues, by queue",
    ),
    metric(
        "queue_consumers",
        Kind::Gauge,
        "Consumers attached to the service's work queues, by queue",
    ),
    metric(
        "broker_connected",
        Kind::Gauge,
        "1 while the service has a broker connection with its topology declared, else 0",
    ),
    metric(
        "db_pool_connections",
        Kind::Gauge,
        "Database pool connections by state (idle, in_use)",
    ),
    metric(
        "db_pool_max_connections",
        Kind::Gauge,
        "The database pool's size limit (DATABASE_POOL_SIZE)",
    ),
    metric(
        "create_user_batch_size",
        Kind::Histogram,
        "CreateUser calls the user service wrote per transaction",
    ),
    metric(
        "create_user_backlog",
        Kind::Gauge,
        "Flows in the chain as the user service counts them against CREATE_USER_MAX_BACKLOG: its flows in flight, or the outbox rows and ready queue messages it reads, whichever is more",
    ),
    metric(
        "create_user_flows_in_flight",
        Kind::Gauge,
        "Flows this user service instance started (CreateUser calls being written included) and has not seen end with their payment_processed",
    ),
    metric(
        "create_user_flows_completed_total",
        Kind::Counter,
        "Flows in flight that ended: the user service saw their payment_processed",
    ),
    metric(
        "create_user_flows_forgotten_total",
        Kind::Counter,
        "Flows in flight no longer counted although their payment_processed was not seen, by reason (expired: older than CREATE_USER_FLOW_EXPIRY; resubscribed: accepted before the watcher of payment_processed subscribed again)",
    ),
];

/// The process-wide recorder, installed on first use (services in one test process share it),
/// with every metric of [`CATALOGUE`] and the process metrics described.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("valid buckets")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        for described in CATALOGUE {
            let (name, help) = (described.name, described.help);
            match described.kind {
                Kind::Counter => ::metrics::describe_counter!(name, help),
                Kind::Gauge => ::metrics::describe_gauge!(name, help),
                Kind::Histogram => ::metrics::describe_histogram!(name, help),
            }
        }
        process_collector().describe();
        handle
    })
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Serves `GET /metrics` on `listener` until `stop`; each scrape first refreshes the process
/// metrics and the gauges of `pool`, labelled with `service`.
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    service: &'static str,
    stop: CancellationToken,
) {
    let handle = handle();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            process_collector().collect();
            record_pool(&pool, service);
            handle.run_upkeep();
            handle.render()
        }),
    );
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(%error, "the metrics endpoint failed");
    }
}

/// The pool's connections by state, and its limit.
fn record_pool(pool: &PgPool, service: &'static str) {
    let (size, idle) = (pool.size(), pool.num_idle() as u32);
    let connections = |state: &'static str, count: u32| {
        ::metrics::gauge!("db_pool_connections", "service" => service, "state" => state)
            .set(f64::from(count));
    };
    connections("idle", idle);
    connections("in_use", size.saturating_sub(idle));
    ::metrics::gauge!("db_pool_max_connections", "service" => service)
        .set(f64::from(pool.options().get_max_connections()));
}

/// Binds `METRICS_ADDR`.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    // Install the recorder before anything records.
    handle();
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))
}

/// The label of every method path the server does not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The method paths (`/package.Service/Method`) the server serves.
#[derive(Debug, Clone, Default)]
pub struct KnownMethods(Arc<HashSet<String>>);

impl KnownMethods {
    /// Every method of the services named in `services` (full names, e.g.
    /// `grpc.health.v1.Health`), as the encoded `FileDescriptorSet`s `descriptor_sets` describe
    /// them.
    pub fn of(services: &[&str], descriptor_sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut methods = HashSet::new();
        for set in descriptor_sets {
            for file in prost_types::FileDescriptorSet::decode(*set)?.file {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    if services.contains(&name.as_str()) {
                        methods.extend(
                            service
                                .method
                                .iter()
                                .map(|method| format!("/{name}/{}", method.name())),
                        );
                    }
                }
            }
        }
        Ok(Self(Arc::new(methods)))
    }

    /// The `method` label of a call to `path`: the path when it is served, else `unknown`.
    pub fn label(&self, path: &str) -> String {
        if self.0.contains(path) {
            path.to_owned()
        } else {
            UNKNOWN_METHOD.to_owned()
        }
    }
}

/// Counts and times gRPC calls by method and status code.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    service: &'static str,
    methods: KnownMethods,
}

impl GrpcMetricsLayer {
    /// Labels calls with `service` and, when it is one of `methods`, their method.
    pub fn new(service: &'static str, methods: KnownMethods) -> Self {
        Self { service, methods }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            service: self.service,
            methods: self.methods.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the server.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    service: &'static str,
    methods: KnownMethods,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = self.methods.label(request.uri().path());
        let service = self.service;
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            // Unary errors are "trailers-only" responses: grpc-status is in the headers. A
            // response without it carries OK in its trailers.
            let code = match &response {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            metrics::counter!(
                "grpc_server_requests_total",
                "service" => service, "method" => method.clone(), "code" => format!("{code:?}")
            )
            .increment(1);
            metrics::histogram!(
                "grpc_server_request_duration_seconds",
                "service" => service, "method" => method
            )
            .record(started.elapsed().as_secs_f64());
            response
        })
    }
}

/// How often the outbox gauges are refreshed.
pub const OUTBOX_STATS_INTERVAL: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_keep_their_path_and_every_other_path_is_unknown() {
        let methods = KnownMethods::of(
            &["user.v1.UserService", "grpc.health.v1.Health"],
            &[
                proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        )
        .expect("valid descriptor sets");

        assert_eq!(
            methods.label("/user.v1.UserService/CreateUser"),
            "/user.v1.UserService/CreateUser"
        );
        assert_eq!(
            methods.label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(methods.label("/user.v1.UserService/DropTables"), "unknown");
        assert_eq!(methods.label("/order.v1.OrderService/GetOrder"), "unknown");
        assert_eq!(methods.label("/made.up/Path"), "unknown");
    }

    #[test]
    fn every_service_and_reflection_have_their_methods_known() {
        let methods = KnownMethods::of(
            &[
                "order.v1.OrderService",
                "payment.v1.PaymentService",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ],
            &[
                proto::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
        )
        .expect("valid descriptor sets");

        for path in [
            "/order.v1.OrderService/GetOrder",
            "/order.v1.OrderService/ListOrders",
            "/payment.v1.PaymentService/GetPayment",
            "/payment.v1.PaymentService/ListPayments",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(methods.label(path), path);
        }
    }
}
