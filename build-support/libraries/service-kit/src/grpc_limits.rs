//! What the gRPC server refuses, so that no client can take it over: calls in flight beyond a
//! limit (shed at once with `RESOURCE_EXHAUSTED`), calls that run too long (`DEADLINE_EXCEEDED`),
//! request messages bigger than the API needs (`RESOURCE_EXHAUSTED`, as grpc-go and grpc-java
//! answer, where tonic would say `OUT_OF_RANGE`), and dead connections (HTTP/2 keepalive).
//!
//! The limits are tower layers around every service the server hosts: [`InFlightLimitLayer`]
//! (one semaphore for every connection; a call that finds no permit is refused at once), which
//! lets health checks through, so that a busy service is not mistaken for a dead one and
//! restarted; tower's `Timeout`, whose error [`LimitStatusLayer`] answers as a gRPC status; and
//! [`MessageSizeLimitLayer`], which reads the length prefix of each request message before any of
//! it is buffered.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http_body::{Frame, SizeHint};
use tonic::{Status, body::Body};

/// The gRPC server's limits (`GRPC_*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Calls in flight at once, across every connection.
    pub concurrency_limit: usize,
    /// Longest a call may run.
    pub request_timeout: Duration,
    /// How often the server pings an idle HTTP/2 connection.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
}

impl Default for GrpcLimits {
    /// 256 calls: four times the benchmark's peak concurrency, while 16 pooled connections do the
    /// work. 10 s: the drain timeout at shutdown, so a drain never cuts a call that is within its
    /// limit. 64 KiB: the biggest legitimate request (CreateUser: a 254-byte e-mail, 200
    /// characters of name, a UUID) is under 2 kB, and reflection requests carry symbol names;
    /// tonic's default would take 4 MiB.
    fn default() -> Self {
        Self {
            concurrency_limit: 256,
            request_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            max_message_bytes: 64 * 1024,
        }
    }
}

/// The path prefix of the health service's calls, which no limit of calls in flight refuses.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// Refuses a call at once with `RESOURCE_EXHAUSTED` while `limit` calls are in flight across
/// every connection; health checks always go through.
#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<tokio::sync::Semaphore>,
}

impl InFlightLimitLayer {
    /// At most `limit` calls in flight.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
        }
    }
}

impl<S> tower::Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// The service [`InFlightLimitLayer`] wraps.
#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<tokio::sync::Semaphore>,
}

impl<S, B> tower::Service<http::Request<B>> for InFlightLimit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PATH) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let refused = Status::resource_exhausted(
                "the server is at its limit of calls in flight; retry later",
            );
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}

/// Answers the error of tower's `Timeout` (`DEADLINE_EXCEEDED`) as a gRPC status, inside the
/// metrics layer so it counts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitStatusLayer;

impl<S> tower::Layer<S> for LimitStatusLayer {
    type Service = LimitStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LimitStatus { inner }
    }
}

/// The service [`LimitStatusLayer`] wraps.
#[derive(Debug, Clone)]
pub struct LimitStatus<S> {
    inner: S,
}

impl<S, Request> tower::Service<Request> for LimitStatus<S>
where
    S: tower::Service<Request, Response = http::Response<Body>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await.map_err(Into::into) {
                Ok(response) => Ok(response),
                Err(error) if error.is::<tower::timeout::error::Elapsed>() => Ok(
                    Status::deadline_exceeded("the call ran past the server's time limit")
                        .into_http(),
                ),
                Err(error) => Err(error),
            }
        })
    }
}

/// Refuses a request message longer than `max_bytes` with `RESOURCE_EXHAUSTED`, as soon as its
/// length prefix arrives.
#[derive(Debug, Clone, Copy)]
pub struct MessageSizeLimitLayer {
    /// Largest accepted message, in bytes.
    pub max_bytes: usize,
}

impl<S> tower::Layer<S> for MessageSizeLimitLayer {
    type Service = MessageSizeLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSizeLimit {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// The service [`MessageSizeLimitLayer`] wraps.
#[derive(Debug, Clone)]
pub struct MessageSizeLimit<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> tower::Service<http::Request<Body>> for MessageSizeLimit<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let max_bytes = self.max_bytes;
        self.inner
            .call(request.map(|body| Body::new(LimitedBody::new(body, max_bytes))))
    }
}

/// The gRPC length-prefixed message framing: a compression flag, then a big-endian length.
const PREFIX_BYTES: usize = 5;

/// A request body that fails with `RESOURCE_EXHAUSTED` at the prefix of a message longer than
/// `max_bytes`; the bytes pass through unchanged.
struct LimitedBody {
    inner: Body,
    max_bytes: usize,
    /// The prefix of the next message, as far as it has arrived.
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl LimitedBody {
    fn new(inner: Body, max_bytes: usize) -> Self {
        Self {
            inner,
            max_bytes,
            prefix: [0; PREFIX_BYTES],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Follows the framing through `chunk`; fails at the first message over the limit.
    fn check(&mut self, mut chunk: &[u8]) -> Result<(), Status> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skipped = self.remaining.min(chunk.len());
                self.remaining -= skipped;
                chunk = &chunk[skipped..];
                continue;
            }
            let taken = (PREFIX_BYTES - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + taken].copy_from_slice(&chunk[..taken]);
            self.prefix_len += taken;
            chunk = &chunk[taken..];
            if self.prefix_len == PREFIX_BYTES {
                self.prefix_len = 0;
                let [_, length @ ..] = self.prefix;
                let length = usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX);
                if length > self.max_bytes {
                    return Err(Status::resource_exhausted(format!(
                        "the request message is {length} bytes; the largest accepted is {} bytes",
                        self.max_bytes
                    )));
                }
                self.remaining = length;
            }
        }
        Ok(())
    }
}

impl http_body::Body for LimitedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(status) = self.check(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.resize(PREFIX_BYTES + length as usize, 7);
        bytes
    }

    #[test]
    fn messages_up_to_the_limit_pass_in_any_split() {
        let stream = [message(10), message(0), message(3)].concat();
        for split in 0..stream.len() {
            let mut body = LimitedBody::new(Body::empty(), 10);
            let (first, second) = stream.split_at(split);
            assert!(body.check(first).is_ok(), "split at {split}");
            assert!(body.check(second).is_ok(), "split at {split}");
        }
    }

    #[test]
    fn a_message_over_the_limit_is_refused_at_its_prefix() {
        let mut body = LimitedBody::new(Body::empty(), 10);
        body.check(&message(4)).expect("small");
        let status = body
            .check(&message(11)[..PREFIX_BYTES])
            .expect_err("too big");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }
}
