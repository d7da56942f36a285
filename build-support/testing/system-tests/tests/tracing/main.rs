//! What the services tell an observer of one flow. One trace from CreateUser to
//! payment_processed: the caller's W3C `traceparent` becomes the parent of the gRPC call's span,
//! travels in the outbox row and the `traceparent` header of every event, and becomes the parent
//! of each consumer's span. And the log lines: a flow is worth no INFO line, and a retried
//! attempt one WARN and no ERROR. Its own test binary, since it installs the process-wide
//! subscriber (an OpenTelemetry layer exporting to memory, and the services' text output
//! written to memory).

// The stack helpers are shared with the flow tests.
#![allow(unreachable_pub, dead_code)]

#[path = "../flow/helpers.rs"]
mod helpers;

use std::sync::OnceLock;

use opentelemetry::{
    Value,
    trace::{TraceId, TracerProvider as _},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use proto::{order::v1::OrderStatus, user::v1::CreateUserRequest};
use service_kit::{
    settings::LogFormat,
    telemetry::{self, MemoryLog},
};
use tracing_subscriber::prelude::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// What the process's subscriber keeps: every finished span, and every log line as the services
/// write it to a file or a pipe.
struct Observed {
    spans: InMemorySpanExporter,
    log: MemoryLog,
}

impl Observed {
    /// The lines logged so far.
    fn lines(&self) -> Vec<String> {
        self.log.text().lines().map(str::to_owned).collect()
    }
}

/// The subscriber every test of this binary shares, installed by the first to ask.
fn observed() -> &'static Observed {
    static OBSERVED: OnceLock<Observed> = OnceLock::new();
    OBSERVED.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let log = MemoryLog::default();
        // As a service logs to a pipe (no terminal), at the default level; no sqlx lines, whose
        // slow-statement warnings depend on the machine.
        let ansi = telemetry::colour(LogFormat::Text, false, false);
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("system-tests")))
            .with(telemetry::output(LogFormat::Text, ansi, log.clone()))
            .with(telemetry::env_filter("info,sqlx=error").expect("a valid filter"))
            .init();
        Observed { spans, log }
    })
}

/// A text line's level: the word after the timestamp.
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.to_string(),
            other => other.to_string(),
        })
}

#[tokio::test]
async fn one_trace_covers_create_user_to_payment_processed() {
    // Arrange: every span goes to memory.
    let exporter = &observed().spans;
    let stack = helpers::spawn_stack().await;

    // Act: a call that is part of the caller's trace.
    let mut request = tonic::Request::new(CreateUserRequest {
        email: "ada@example.com".into(),
        name: "Ada".into(),
        ..CreateUserRequest::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .expect("ascii"),
    );
    let user = stack
        .users
        .clone()
        .create_user(request)
        .await
        .expect("created")
        .into_inner()
        .user
        .expect("a user");
    stack
        .wait_for_order_status(&user.user_id, OrderStatus::Paid)
        .await;

    // Assert: the call and all three consumers' spans are in the caller's trace.
    let trace_id = TraceId::from_hex(TRACE_ID).expect("hex");
    let consumers = test_support::eventually_some(|| async {
        let spans = exporter.get_finished_spans().expect("spans");
        let in_trace: Vec<_> = spans
            .iter()
            .filter(|span| span.span_context.trace_id() == trace_id)
            .collect();
        let mut consumers: Vec<_> = in_trace
            .iter()
            .filter(|span| span.name == "process")
            .filter_map(|span| Some((attribute(span, "consumer")?, attribute(span, "event_type")?)))
            .collect();
        consumers.sort();
        let grpc = in_trace
            .iter()
            .any(|span| span.name == "grpc_request" || span.name == "create_user");
        (grpc && consumers.len() >= 3).then_some(consumers)
    })
    .await;
    assert_eq!(
        consumers,
        [
            (
                "order_service".to_owned(),
                "payment.v1.PaymentProcessed".to_owned()
            ),
            ("order_service".to_owned(), "user.v1.UserCreated".to_owned()),
            (
                "payment_service".to_owned(),
                "order.v1.OrderCreated".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn a_flow_logs_no_info_line_and_one_warn_per_retried_attempt() {
    // Arrange
    let observed = observed();
    let stack = helpers::spawn_stack().await;

    // Act: a charge the gateway fails twice, transiently, before it succeeds.
    let user = stack.create_user("ada+flaky@example.com").await;
    stack
        .wait_for_order_status(&user.user_id, OrderStatus::Paid)
        .await;

    // Assert: the flow's lines (every line of its call and its messages carries its
    // correlation id) are the two retries' WARNs; the capture does see INFO lines.
    let lines = observed.lines();
    assert!(
        lines.iter().any(|line| level(line) == "INFO"),
        "no INFO line captured at all"
    );
    assert!(
        lines.iter().all(|line| !line.contains('\u{1b}')),
        "ANSI escape codes in a log that is no terminal"
    );
    let flow: Vec<_> = lines
        .iter()
        .filter(|line| line.contains(&user.correlation_id))
        .collect();
    let levels: Vec<_> = flow.iter().map(|line| level(line)).collect();
    assert_eq!(levels, ["WARN", "WARN"], "the flow's lines: {flow:#?}");
    for (attempt, line) in flow.iter().enumerate() {
        assert!(
            line.contains(&format!("attempt={}", attempt + 1))
                && line.contains("delay=")
                && line.contains("simulated timeout"),
            "a retry's line without its attempt, delay or reason: {line}"
        );
    }
}
