//! The event envelope: a protobuf payload plus the metadata every message carries.
//!
//! This is the one place that maps that metadata to AMQP properties and headers, so the
//! publisher, the outbox and the consumer all agree on it: events go out as an [`Envelope`] and
//! come in through [`decode`] as an [`Incoming`].

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties,
    message::Delivery,
    types::{AMQPValue, FieldTable, LongString},
};
use proto::Event;
use uuid::Uuid;

use crate::{
    headers::text_header,
    trace_context::{self, TraceParent},
};

/// The AMQP `content_type` of every event.
pub const CONTENT_TYPE: &str = "application/protobuf";
/// Header carrying the id of the event or request that caused this event.
pub const CAUSATION_ID_HEADER: &str = "causation_id";
/// Header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// AMQP `delivery_mode` for persistent messages.
const PERSISTENT: u8 = 2;

/// Where a new event comes from: the flow it belongs to and what directly caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    /// The id shared by every event of one flow: the originating request's `x-request-id`.
    pub correlation_id: String,
    /// The id of the request or event that caused this event.
    pub causation_id: String,
    /// The trace context to continue.
    pub traceparent: TraceParent,
}

/// An event with everything needed to publish it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The event id: AMQP `message_id`, and the consumers' dedupe key.
    pub message_id: Uuid,
    /// Full protobuf name of the payload: AMQP `type`.
    pub event_type: String,
    /// Routing key on the events exchange: the event's name.
    pub routing_key: String,
    /// The protobuf-encoded event.
    pub payload: Vec<u8>,
    pub correlation_id: String,
    pub causation_id: String,
    pub traceparent: String,
    /// When the event happened: AMQP `timestamp`.
    pub occurred_at: DateTime<Utc>,
}

impl Envelope {
    /// Wraps `event` with a fresh, time-ordered id.
    pub fn new<E: Event>(event: &E, context: &EventContext) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            event_type: E::TYPE_NAME.to_owned(),
            routing_key: E::ROUTING_KEY.to_owned(),
            payload: event.encode_to_vec(),
            correlation_id: context.correlation_id.clone(),
            causation_id: context.causation_id.clone(),
            traceparent: context.traceparent.to_string(),
            occurred_at: Utc::now(),
        }
    }

    /// The AMQP properties and headers of every event; `app_id` names the producing service.
    pub fn properties(&self, app_id: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            CAUSATION_ID_HEADER.into(),
            AMQPValue::LongString(LongString::from(self.causation_id.as_str())),
        );
        headers.insert(
            TRACEPARENT_HEADER.into(),
            AMQPValue::LongString(LongString::from(self.traceparent.as_str())),
        );
        BasicProperties::default()
            .with_message_id(self.message_id.to_string().into())
            .with_type(self.event_type.as_str().into())
            .with_content_type(CONTENT_TYPE.into())
            .with_correlation_id(self.correlation_id.as_str().into())
            .with_timestamp(self.occurred_at.timestamp().max(0).unsigned_abs())
            .with_app_id(app_id.into())
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers)
    }
}

/// Largest payload a consumer accepts; anything bigger is dead-lettered undecoded.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// A decoded event and the metadata it travelled with.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming<E> {
    pub event: E,
    /// The event id: the inbox key.
    pub message_id: Uuid,
    pub correlation_id: String,
    /// What caused this event, if the producer said.
    pub causation_id: Option<String>,
    /// The producer's trace context (a new trace when it sent none): this hop's parent.
    pub traceparent: TraceParent,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
}

impl<E> Incoming<E> {
    /// The context of the events this one causes: the same flow, caused by this message, in the
    /// current span's trace (a child of the producer's without OpenTelemetry).
    pub fn caused_context(&self) -> EventContext {
        EventContext {
            correlation_id: self.correlation_id.clone(),
            causation_id: self.message_id.to_string(),
            traceparent: trace_context::current().unwrap_or_else(|| self.traceparent.child()),
        }
    }
}

/// Why a delivery could not be decoded; it is dead-lettered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("no message_id property")]
    MissingMessageId,
    #[error("message_id {0:?} is not a UUID")]
    InvalidMessageId(String),
    #[error("type {found:?} is not the expected {expected}")]
    UnexpectedType {
        expected: &'static str,
        found: String,
    },
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("payload does not decode: {0}")]
    Undecodable(String),
}

/// Decodes a delivery as `E`, checking the metadata every event carries.
pub fn decode<E: Event>(delivery: &Delivery) -> Result<Incoming<E>, DecodeError> {
    let properties = &delivery.properties;
    let raw_id = properties
        .message_id()
        .as_ref()
        .ok_or(DecodeError::MissingMessageId)?
        .as_str();
    let message_id =
        Uuid::parse_str(raw_id).map_err(|_| DecodeError::InvalidMessageId(raw_id.to_owned()))?;
    let kind = properties.kind().as_ref().map(|k| k.as_str()).unwrap_or("");
    if kind != E::TYPE_NAME {
        return Err(DecodeError::UnexpectedType {
            expected: E::TYPE_NAME,
            found: kind.to_owned(),
        });
    }
    if delivery.data.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(delivery.data.len()));
    }
    let event = E::decode(delivery.data.as_slice())
        .map_err(|error| DecodeError::Undecodable(error.to_string()))?;

    let header = |name: &str| text_header(properties, name);
    Ok(Incoming {
        event,
        message_id,
        correlation_id: properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| message_id.to_string()),
        causation_id: header(CAUSATION_ID_HEADER),
        traceparent: header(TRACEPARENT_HEADER)
            .as_deref()
            .and_then(TraceParent::parse)
            .unwrap_or_else(TraceParent::new_root),
        redelivered: delivery.redelivered,
    })
}

/// How long ago a UUIDv7 id (a message id, an order id) was minted; `None` for other ids or
/// clock skew.
pub fn minted_ago(id: Uuid) -> Option<std::time::Duration> {
    let (seconds, nanos) = id.get_timestamp()?.to_unix();
    let minted = std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanos);
    std::time::SystemTime::now().duration_since(minted).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::user::v1::UserCreated;

    fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        properties.headers().as_ref()?.inner().get(name)
    }

    fn delivery(payload: Vec<u8>, properties: BasicProperties) -> Delivery {
        let mut delivery = Delivery::mock(1, "events".into(), "user_created".into(), true, payload);
        delivery.properties = properties;
        delivery
    }

    fn user_created() -> (UserCreated, Envelope) {
        let event = UserCreated {
            user_id: Uuid::new_v4().to_string(),
            email: "ada@example.com".into(),
            ..UserCreated::default()
        };
        let context = EventContext {
            correlation_id: "req-1".into(),
            causation_id: "cause-1".into(),
            traceparent: TraceParent::new_root(),
        };
        let envelope = Envelope::new(&event, &context);
        (event, envelope)
    }

    #[test]
    fn an_envelope_sent_decodes_to_the_same_event_and_context() {
        let (event, envelope) = user_created();
        let sent = delivery(
            envelope.payload.clone(),
            envelope.properties("user-service"),
        );

        let incoming = decode::<UserCreated>(&sent).expect("it decodes");

        assert_eq!(incoming.event, event);
        assert_eq!(incoming.message_id, envelope.message_id);
        assert_eq!(incoming.correlation_id, "req-1");
        assert_eq!(incoming.causation_id.as_deref(), Some("cause-1"));
        assert_eq!(incoming.traceparent.to_string(), envelope.traceparent);
        assert!(incoming.redelivered);
    }

    #[test]
    fn what_lacks_the_contract_does_not_decode() {
        let (_, envelope) = user_created();
        let good = envelope.properties("user-service");
        let cases = [
            (
                delivery(envelope.payload.clone(), BasicProperties::default()),
                DecodeError::MissingMessageId,
            ),
            (
                delivery(
                    envelope.payload.clone(),
                    good.clone().with_message_id("nope".into()),
                ),
                DecodeError::InvalidMessageId("nope".into()),
            ),
            (
                delivery(
                    envelope.payload.clone(),
                    good.clone().with_type("acme.v1.Other".into()),
                ),
                DecodeError::UnexpectedType {
                    expected: "user.v1.UserCreated",
                    found: "acme.v1.Other".into(),
                },
            ),
            (
                delivery(vec![0; MAX_PAYLOAD_BYTES + 1], good.clone()),
                DecodeError::TooLarge(MAX_PAYLOAD_BYTES + 1),
            ),
        ];
        for (sent, expected) in cases {
            assert_eq!(decode::<UserCreated>(&sent).expect_err("refused"), expected);
        }
        let garbage = delivery(vec![0xff, 0xff], good);
        assert!(matches!(
            decode::<UserCreated>(&garbage),
            Err(DecodeError::Undecodable(_))
        ));
    }

    #[test]
    fn without_correlation_or_trace_a_message_starts_its_own() {
        let (_, envelope) = user_created();
        let bare = BasicProperties::default()
            .with_message_id(envelope.message_id.to_string().into())
            .with_type("user.v1.UserCreated".into());

        let incoming = decode::<UserCreated>(&delivery(envelope.payload, bare)).expect("decodes");

        assert_eq!(incoming.correlation_id, envelope.message_id.to_string());
        assert_eq!(incoming.causation_id, None);
    }

    #[test]
    fn properties_carry_every_field_of_the_contract() {
        let context = EventContext {
            correlation_id: "req-1".into(),
            causation_id: "req-1".into(),
            traceparent: TraceParent::new_root(),
        };
        let envelope = Envelope::new(&UserCreated::default(), &context);

        let properties = envelope.properties("user-service");

        assert_eq!(
            properties.message_id().as_ref().map(|v| v.as_str()),
            Some(envelope.message_id.to_string().as_str())
        );
        assert_eq!(
            properties.kind().as_ref().map(|v| v.as_str()),
            Some("user.v1.UserCreated")
        );
        assert_eq!(
            properties.content_type().as_ref().map(|v| v.as_str()),
            Some(CONTENT_TYPE)
        );
        assert_eq!(
            properties.correlation_id().as_ref().map(|v| v.as_str()),
            Some("req-1")
        );
        assert_eq!(
            properties.app_id().as_ref().map(|v| v.as_str()),
            Some("user-service")
        );
        assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
        assert!(properties.timestamp().is_some());
        assert!(matches!(
            header(&properties, CAUSATION_ID_HEADER),
            Some(AMQPValue::LongString(_))
        ));
        assert!(matches!(
            header(&properties, TRACEPARENT_HEADER),
            Some(AMQPValue::LongString(_))
        ));
        assert_eq!(envelope.routing_key, "user_created");
    }
}
