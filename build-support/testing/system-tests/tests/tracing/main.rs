//! One trace from CreateUser to payment_processed: the caller's W3C `traceparent` becomes the
//! parent of the gRPC call's span, travels in the outbox row and the `traceparent` header of every
//! event, and becomes the parent of each consumer's span. Its own test binary, since it installs
//! the process-wide subscriber (an OpenTelemetry layer exporting to memory).

// The stack helpers are shared with the flow tests.
#![allow(unreachable_pub, dead_code)]

#[path = "../flow/helpers.rs"]
mod helpers;

use opentelemetry::{
    Value,
    trace::{TraceId, TracerProvider as _},
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use proto::{order::v1::OrderStatus, user::v1::CreateUserRequest};
use tracing_subscriber::{EnvFilter, prelude::*};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

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
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("system-tests")))
        .with(EnvFilter::new("info"))
        .init();
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
