//! Prometheus metrics: the process-wide recorder, the `/metrics` endpoint on `METRICS_ADDR`, and
//! the tower layer that counts and times every gRPC call.
//!
//! Labels take a bounded set of values, so no client can grow `/metrics`: the `method` of a gRPC
//! call is its path only when the server serves it ([`KnownMethods`]), `unknown` otherwise.
//!
//! Metrics (every duration in seconds):
//! - `grpc_server_requests_total{service,method,code}`, `grpc_server_request_duration_seconds{service,method}`
//! - `events_published_total{service,type,outcome}` (outbox relay; `acked` or `failed`)
//! - `events_consumed_total{consumer,type,outcome}` (`applied`, `duplicate`, `retried`,
//!   `dead_lettered`, `requeued`), `dead_letters_total{consumer,kind}`
//! - `event_handler_duration_seconds{consumer,type}`, `event_end_to_end_age_seconds{consumer,type}`
//! - `outbox_pending_rows{service}`, `outbox_oldest_age_seconds{service}`
//! - `inbox_rows_deleted_total{consumer}` (inbox rows past `INBOX_RETENTION`)

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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Histogram buckets for every `*_seconds` metric: 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder, installed on first use (services in one test process share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("valid buckets")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    let handle = handle();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
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
