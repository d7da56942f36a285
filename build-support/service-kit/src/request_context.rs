//! The context a gRPC call gives the events it causes: its `x-request-id` becomes their
//! `correlation_id` (and the first event's `causation_id`), its `traceparent` their trace.

use messaging::{EventContext, TraceParent, trace_context};
use tonic::metadata::MetadataMap;

use crate::error::{ApiError, Violation};

/// The request-id metadata key; the server sets it when the client did not and echoes it back.
pub const REQUEST_ID: &str = "x-request-id";
/// The W3C trace-context metadata key.
pub const TRACEPARENT: &str = "traceparent";
/// Longest accepted request id; it travels as an AMQP short string.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The event context of a call: its events continue the current span's trace (which
/// [`TraceContextLayer`] made a child of the caller's), or, without OpenTelemetry, the caller's
/// `traceparent`.
pub fn event_context(metadata: &MetadataMap) -> Result<EventContext, ApiError> {
    let request_id = request_id(metadata)?;
    let traceparent = metadata
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    Ok(EventContext {
        correlation_id: request_id.clone(),
        causation_id: request_id,
        traceparent: trace_context::current()
            .unwrap_or_else(|| TraceParent::continue_from(traceparent)),
    })
}

/// Opens a span per gRPC call, with the caller's `traceparent` as its remote parent, so the
/// call and the events it causes join the caller's trace.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextLayer;

impl<S> tower::Layer<S> for TraceContextLayer {
    type Service = TraceContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContext { inner }
    }
}

/// The service [`TraceContextLayer`] wraps around the server.
#[derive(Debug, Clone)]
pub struct TraceContext<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for TraceContext<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let span = tracing::info_span!(
            "grpc_request",
            method = %request.uri().path(),
            correlation_id = %header(REQUEST_ID),
        );
        if let Some(parent) = TraceParent::parse(&header(TRACEPARENT)) {
            trace_context::set_parent(&span, &parent);
        }
        self.inner.call(request).instrument(span)
    }
}

/// The call's request id: what the client sent, or what the server generated.
pub fn request_id(metadata: &MetadataMap) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::InvalidArgument(vec![Violation::new(
            REQUEST_ID,
            format!("must be 1 to {MAX_REQUEST_ID_LEN} visible ASCII characters"),
        )])
    };
    let value = metadata
        .get(REQUEST_ID)
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("the request-id layer is not installed"))
        })?
        .to_str()
        .map_err(|_| invalid())?;
    let valid = !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(value.to_owned())
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_id_becomes_correlation_and_causation() {
        let mut metadata = MetadataMap::new();
        metadata.insert(REQUEST_ID, "req-42".parse().expect("ascii"));
        let context = event_context(&metadata).expect("valid");
        assert_eq!(context.correlation_id, "req-42");
        assert_eq!(context.causation_id, "req-42");
    }

    #[test]
    fn an_incoming_trace_is_continued() {
        let mut metadata = MetadataMap::new();
        metadata.insert(REQUEST_ID, "r".parse().expect("ascii"));
        metadata.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("ascii"),
        );
        let context = event_context(&metadata).expect("valid");
        assert_eq!(
            context.traceparent.trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn an_overlong_request_id_is_rejected() {
        let mut metadata = MetadataMap::new();
        metadata.insert(REQUEST_ID, "x".repeat(129).parse().expect("ascii"));
        assert!(matches!(
            event_context(&metadata),
            Err(ApiError::InvalidArgument(_))
        ));
    }
}
