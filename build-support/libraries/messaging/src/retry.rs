//! Broker-durable retry and dead letters.
//!
//! A transiently failed message is re-published, with its attempt count in a header, to a retry
//! queue whose TTL is the back-off delay and which dead-letters back into the work queue, so the
//! wait survives a restart of the consumer. Both hops go through the dead-letter exchange (the
//! retry queue is bound to it under its own name, the work queue under `<queue>.requeue`): a
//! service needs no access to the default exchange, which would let it write to any queue. Past the last delay, and at once for a permanent
//! failure or an undecodable message, it is re-published to the queue's dead-letter queue with
//! headers saying what failed, where, when and how often.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::headers::header;
pub use crate::headers::{integer_header, text_header};
use lapin::{
    BasicProperties,
    message::Delivery,
    types::{AMQPValue, LongString},
};

/// Attempts so far (the first failure makes 1).
pub const ATTEMPTS_HEADER: &str = "attempts";
/// `undecodable`, `permanent`, `retries_exhausted` or `untrusted`.
pub const FAILURE_KIND_HEADER: &str = "failure_kind";
/// The last error, as text.
pub const FAILURE_MESSAGE_HEADER: &str = "failure_message";
/// RFC 3339 time of the first failure.
pub const FIRST_FAILURE_HEADER: &str = "first_failure_time";
/// RFC 3339 time of the last failure.
pub const LAST_FAILURE_HEADER: &str = "last_failure_time";
/// The consumer that failed, e.g. `payment_service`.
pub const CONSUMER_HEADER: &str = "failed_consumer";
/// The exchange the message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "original_exchange";
/// The routing key the message was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "original_routing_key";
/// The producer's `user_id`, kept when a consumer re-publishes a message under its own (see
/// [`crate::trust`]).
pub const ORIGINAL_USER_ID_HEADER: &str = "original_user_id";
/// Suffix of the routing key on the dead-letter exchange that leads back into a work queue.
pub const REQUEUE_SUFFIX: &str = ".requeue";
/// Longest failure message kept in a header.
const MAX_FAILURE_MESSAGE: usize = 1024;

/// Why a message ended in a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Undecodable,
    Permanent,
    RetriesExhausted,
    /// Its producer is not trusted for its event type (see [`crate::trust`]).
    Untrusted,
    /// Its headers are too deep or too big to forward (see [`crate::limits`]): rejected, so the
    /// broker dead-letters it with `x-death` but without our headers.
    OversizedHeaders,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Permanent => "permanent",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Untrusted => "untrusted",
            Self::OversizedHeaders => "oversized_headers",
        }
    }
}

/// An invalid `RETRY_DELAYS`.
#[derive(Debug, thiserror::Error)]
#[error(
    "retry delays {0:?} are invalid: give one or more of e.g. 500ms, 5s, 2m, 1h, comma-separated"
)]
pub struct InvalidRetryDelays(String);

/// The back-off delays of successive retries; their number bounds the attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    delays: Vec<Duration>,
}

/// The default delays: 1 s, 5 s, 30 s, 2 min.
pub const DEFAULT_RETRY_DELAYS: &str = "1s,5s,30s,2m";

impl RetryPolicy {
    /// Parses `1s,5s,30s,2m` (units ms, s, m, h, d).
    pub fn parse(raw: &str) -> Result<Self, InvalidRetryDelays> {
        let invalid = || InvalidRetryDelays(raw.to_owned());
        let delays = raw
            .split(',')
            .map(|part| parse_duration(part.trim()).ok_or_else(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.iter().any(Duration::is_zero) {
            return Err(invalid());
        }
        Ok(Self { delays })
    }

    /// The delays, in order.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// How long the whole chain of retries waits: the longest a message can be retried after
    /// its first failure.
    pub fn total(&self) -> Duration {
        self.delays.iter().sum()
    }

    /// The delay before retry number `attempt` (1-based), or `None` past the last.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        self.delays.get(index).copied()
    }

    /// The attempts of a delivery so far, as its (untrusted) header says, at most the number of
    /// retries: a higher count makes the next failure the last, never wraps.
    pub fn attempts_of(&self, delivery: &Delivery) -> u32 {
        let retries = u32::try_from(self.delays.len()).unwrap_or(u32::MAX);
        attempts(delivery).min(retries)
    }

    /// The name of `queue`'s retry queue for `delay`. (`.wait.`: the `.retry.` queues of earlier
    /// versions went back through the default exchange and are left to drain.)
    pub fn retry_queue(queue: &str, delay: Duration) -> String {
        format!("{queue}.wait.{}ms", delay.as_millis())
    }

    /// The routing key on the dead-letter exchange that leads back into `queue`.
    pub fn requeue_key(queue: &str) -> String {
        format!("{queue}{REQUEUE_SUFFIX}")
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::parse(DEFAULT_RETRY_DELAYS).expect("the default delays are valid")
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h` or `30d`.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(number.checked_mul(3600)?)),
        "d" => Some(Duration::from_secs(number.checked_mul(86_400)?)),
        _ => None,
    }
}

/// The attempts a delivery has had so far, from its header: 0 without one, saturated to `u32`.
pub fn attempts(delivery: &Delivery) -> u32 {
    integer_header(&delivery.properties, ATTEMPTS_HEADER)
        .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// What a failure adds to a message's properties before it is re-published to a retry queue
/// (`kind` is `None`) or to a dead-letter queue.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub consumer: &'a str,
    pub attempts: u32,
    pub kind: Option<FailureKind>,
    pub message: String,
    pub at: DateTime<Utc>,
}

impl Failure<'_> {
    /// The delivery's properties with the failure headers set, and without a `user_id`: the
    /// producer's moves to the [`ORIGINAL_USER_ID_HEADER`] header. The original exchange and routing
    /// key, and the first failure time, are kept from an earlier failure when there was one.
    pub fn annotate(&self, delivery: &Delivery) -> BasicProperties {
        let properties = &delivery.properties;
        let mut headers = properties.headers().clone().unwrap_or_default();
        let mut set = |name: &str, value: AMQPValue| {
            headers.insert(name.into(), value);
        };
        let long = |s: &str| AMQPValue::LongString(LongString::from(s));
        let now = self.at.to_rfc3339();
        if header(properties, ORIGINAL_EXCHANGE_HEADER).is_none() {
            set(ORIGINAL_EXCHANGE_HEADER, long(delivery.exchange.as_str()));
            set(
                ORIGINAL_ROUTING_KEY_HEADER,
                long(delivery.routing_key.as_str()),
            );
        }
        if let Some(user_id) = properties.user_id()
            && header(properties, ORIGINAL_USER_ID_HEADER).is_none()
        {
            set(ORIGINAL_USER_ID_HEADER, long(user_id.as_str()));
        }
        if header(properties, FIRST_FAILURE_HEADER).is_none() {
            set(FIRST_FAILURE_HEADER, long(&now));
        }
        set(LAST_FAILURE_HEADER, long(&now));
        set(
            ATTEMPTS_HEADER,
            AMQPValue::LongLongInt(i64::from(self.attempts)),
        );
        set(CONSUMER_HEADER, long(self.consumer));
        let mut message = self.message.clone();
        if message.len() > MAX_FAILURE_MESSAGE {
            let mut end = MAX_FAILURE_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        set(FAILURE_MESSAGE_HEADER, long(&message));
        if let Some(kind) = self.kind {
            set(FAILURE_KIND_HEADER, long(kind.as_str()));
        }
        // Re-published under the forwarding publisher's own user_id (the broker allows no
        // other); the producer's stays in its header.
        without_user_id(properties).with_headers(headers)
    }
}

/// `properties` without their `user_id` (and without headers, which the caller sets).
fn without_user_id(properties: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    let text = |value: &Option<lapin::types::ShortString>| value.clone();
    if let Some(value) = text(properties.content_type()) {
        copy = copy.with_content_type(value);
    }
    if let Some(value) = text(properties.content_encoding()) {
        copy = copy.with_content_encoding(value);
    }
    if let Some(value) = *properties.delivery_mode() {
        copy = copy.with_delivery_mode(value);
    }
    if let Some(value) = *properties.priority() {
        copy = copy.with_priority(value);
    }
    if let Some(value) = text(properties.correlation_id()) {
        copy = copy.with_correlation_id(value);
    }
    if let Some(value) = text(properties.reply_to()) {
        copy = copy.with_reply_to(value);
    }
    if let Some(value) = text(properties.expiration()) {
        copy = copy.with_expiration(value);
    }
    if let Some(value) = text(properties.message_id()) {
        copy = copy.with_message_id(value);
    }
    if let Some(value) = *properties.timestamp() {
        copy = copy.with_timestamp(value);
    }
    if let Some(value) = text(properties.kind()) {
        copy = copy.with_type(value);
    }
    if let Some(value) = text(properties.app_id()) {
        copy = copy.with_app_id(value);
    }
    if let Some(value) = text(properties.cluster_id()) {
        copy = copy.with_cluster_id(value);
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_with_units() {
        let policy = RetryPolicy::parse("500ms, 5s,2m,1h").expect("valid");
        assert_eq!(
            policy.delays(),
            [
                Duration::from_millis(500),
                Duration::from_secs(5),
                Duration::from_secs(120),
                Duration::from_secs(3600)
            ]
        );
        assert_eq!(RetryPolicy::default().delays().len(), 4);
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
    }

    #[test]
    fn the_chain_waits_the_sum_of_its_delays() {
        let policy = RetryPolicy::parse("1s,5s,30s,2m").expect("valid");
        assert_eq!(policy.total(), Duration::from_secs(156));
    }

    #[test]
    fn bad_delays_are_rejected() {
        for raw in ["", "5", "5x", "0s", "1s,,2s", "-1s"] {
            assert!(RetryPolicy::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn each_attempt_has_its_delay_and_the_last_one_ends_retrying() {
        let policy = RetryPolicy::parse("1s,5s").expect("valid");
        assert_eq!(policy.delay(0), None);
        assert_eq!(policy.delay(1), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay(2), Some(Duration::from_secs(5)));
        assert_eq!(policy.delay(3), None);
    }

    #[test]
    fn retry_queues_are_named_by_queue_and_delay() {
        assert_eq!(
            RetryPolicy::retry_queue("ns.order_service.user_created", Duration::from_secs(5)),
            "ns.order_service.user_created.wait.5000ms"
        );
        assert_eq!(
            RetryPolicy::requeue_key("ns.order_service.user_created"),
            "ns.order_service.user_created.requeue"
        );
    }
}
