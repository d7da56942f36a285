//! The context a gRPC call gives the events it causes: its `x-request-id` becomes their
//! `correlation_id` (and the first event's `causation_id`), its `traceparent` their trace.
//! A client's `x-request-id` that cannot serve as one is replaced before any of that.

use messaging::{EventContext, TraceParent, trace_context};
use tonic::metadata::MetadataMap;

use crate::error::ApiError;

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

/// Whether a client's `x-request-id` can serve as the request id: 1 to
/// [`MAX_REQUEST_ID_LEN`] visible ASCII characters, fit for an AMQP short string, a log line and
/// an SQL parameter alike.
fn is_valid_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_REQUEST_ID_LEN && value.iter().all(u8::is_ascii_graphic)
}

/// Replaces an `x-request-id` that [`is_valid_request_id`] refuses with a generated UUID, as if
/// the client had sent none, and logs that (with the length, never the value). Runs before the
/// request-id layers, on every method.
pub fn replace_invalid_request_id<B>(mut request: http::Request<B>) -> http::Request<B> {
    let Some(sent) = request.headers().get(REQUEST_ID) else {
        return request;
    };
    if is_valid_request_id(sent.as_bytes()) {
        return request;
    }
    let generated = uuid::Uuid::new_v4().to_string();
    tracing::warn!(
        method = %request.uri().path(),
        sent_len = sent.len(),
        request_id = %generated,
        "replacing an x-request-id that is not 1 to {MAX_REQUEST_ID_LEN} visible ASCII characters"
    );
    match http::HeaderValue::from_str(&generated) {
        Ok(generated) => request.headers_mut().insert(REQUEST_ID, generated),
        // A UUID is always a valid header value; were it not, the request-id layer generates one.
        Err(_) => request.headers_mut().remove(REQUEST_ID),
    };
    request
}

/// The call's request id: what the client sent, or what the server generated in its place.
pub fn request_id(metadata: &MetadataMap) -> Result<String, ApiError> {
    let missing = || {
        ApiError::Internal(anyhow::anyhow!(
            "no valid x-request-id: the request-id layers are not installed"
        ))
    };
    let value = metadata.get(REQUEST_ID).ok_or_else(missing)?;
    if is_valid_request_id(value.as_bytes()) {
        value.to_str().map(str::to_owned).map_err(|_| missing())
    } else {
        Err(missing())
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

    fn with_request_id(value: &[u8]) -> http::Request<()> {
        let mut request = http::Request::new(());
        request.headers_mut().insert(
            REQUEST_ID,
            http::HeaderValue::from_bytes(value).expect("a header value"),
        );
        request
    }

    #[test]
    fn a_request_id_that_cannot_serve_is_replaced_by_a_uuid() {
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        for sent in [
            long.as_bytes(),
            b"",
            b"a b",
            b"tab\t",
            "caf\u{e9}".as_bytes(),
        ] {
            let request = replace_invalid_request_id(with_request_id(sent));

            let kept = request.headers().get(REQUEST_ID).expect("a request id");
            assert_ne!(kept.as_bytes(), sent);
            let kept = kept.to_str().expect("ASCII");
            assert!(uuid::Uuid::parse_str(kept).is_ok(), "{kept}");
        }
    }

    #[test]
    fn a_valid_request_id_is_kept_and_a_missing_one_left_to_the_generator() {
        let longest = "x".repeat(MAX_REQUEST_ID_LEN);
        for sent in [longest.as_bytes(), b"req-42", b"~!"] {
            let request = replace_invalid_request_id(with_request_id(sent));
            assert_eq!(
                request.headers().get(REQUEST_ID).map(|v| v.as_bytes()),
                Some(sent)
            );
        }
        let request = replace_invalid_request_id(http::Request::new(()));
        assert!(request.headers().get(REQUEST_ID).is_none());
    }

    #[test]
    fn without_the_request_id_layers_a_call_fails_as_internal() {
        let mut metadata = MetadataMap::new();
        assert!(matches!(
            event_context(&metadata),
            Err(ApiError::Internal(_))
        ));
        metadata.insert(REQUEST_ID, "x".repeat(129).parse().expect("ascii"));
        assert!(matches!(
            event_context(&metadata),
            Err(ApiError::Internal(_))
        ));
    }
}
