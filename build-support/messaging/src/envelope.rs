//! The event envelope: a protobuf payload plus the metadata SPEC §4 puts on every message.
//!
//! This is the one place that maps that metadata to AMQP properties and headers, so the
//! publisher, the outbox and (later) the consumer all agree on it.

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use proto::Event;
use uuid::Uuid;

use crate::trace_context::TraceParent;

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

    /// The AMQP properties and headers of SPEC §4; `app_id` names the producing service.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proto::user::v1::UserCreated;

    fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        properties.headers().as_ref()?.inner().get(name)
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
