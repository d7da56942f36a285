//! Prometheus metrics: the process-wide recorder, the `/metrics` endpoint on `METRICS_ADDR`, and
//! the tower layer that counts and times every gRPC call.
//!
//! Metrics (every duration in seconds):
//! - `grpc_server_requests_total{service,method,code}`, `grpc_server_request_duration_seconds{service,method}`
//! - `events_published_total{service,type,outcome}` (outbox relay; `acked` or `failed`)
//! - `events_consumed_total{consumer,type,outcome}` (`applied`, `duplicate`, `retried`,
//!   `dead_lettered`, `requeued`), `dead_letters_total{consumer,kind}`
//! - `event_handler_duration_seconds{consumer,type}`, `event_end_to_end_age_seconds{consumer,type}`
//! - `outbox_pending_rows{service}`, `outbox_oldest_age_seconds{service}`

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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

/// Counts and times gRPC calls by method and status code.
#[derive(Debug, Clone, Copy)]
pub struct GrpcMetricsLayer {
    pub service: &'static str,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            service: self.service,
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the server.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    service: &'static str,
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
        let method = request.uri().path().to_owned();
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
