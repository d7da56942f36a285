//! Who may produce which event.
//!
//! Every service publishes with the AMQP `user_id` property set to the broker user it logged in
//! as, and RabbitMQ refuses a publish whose `user_id` is not the publishing connection's user (its
//! "validated user-id" feature): on a delivery, `user_id` names the producer. A consumer applies
//! an event only when its producer is trusted for that event type ([`TrustedProducers`],
//! `TRUSTED_PRODUCERS`); anything else is dead-lettered as `untrusted`, never applied.
//!
//! A consumer re-publishes a message itself when it retries it, under its own `user_id`, keeping
//! the producer's in the [`ORIGINAL_USER_ID_HEADER`] header. Only the consumer's own broker user
//! can publish under its `user_id`, so for such a message the header names the producer.

use std::collections::{BTreeMap, BTreeSet};

use lapin::BasicProperties;

pub use crate::retry::ORIGINAL_USER_ID_HEADER;
use crate::{headers::text_header, topology::EVENTS};

/// An invalid `TRUSTED_PRODUCERS`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidTrustedProducers {
    #[error(
        "TRUSTED_PRODUCERS entry {0:?} is not `<event>=<broker user>` \
         (e.g. user_created=user_service)"
    )]
    Malformed(String),
    #[error("TRUSTED_PRODUCERS names {0:?}, which is not an event of this system (known: {known})", known = known_events().join(", "))]
    UnknownEvent(String),
}

/// For each event type, the broker users whose publishes of it are applied.
///
/// Unset (the default), every event is trusted only from the broker user the service itself logs
/// in as: a stack whose services share one broker user, as the local one (`guest`) does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProducers {
    by_event: Option<BTreeMap<String, BTreeSet<String>>>,
}

impl TrustedProducers {
    /// Parses `user_created=user_service,order_created=order_service,…`: an event may be named
    /// more than once (several producers), a user too (several events). Empty means unset.
    pub fn parse(raw: &str) -> Result<Self, InvalidTrustedProducers> {
        if raw.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut by_event = BTreeMap::<String, BTreeSet<String>>::new();
        for entry in raw.split(',') {
            let malformed = || InvalidTrustedProducers::Malformed(entry.trim().to_owned());
            let (event, user) = entry.split_once('=').ok_or_else(malformed)?;
            let (event, user) = (event.trim(), user.trim());
            if event.is_empty() || user.is_empty() {
                return Err(malformed());
            }
            if !known_events().contains(&event) {
                return Err(InvalidTrustedProducers::UnknownEvent(event.to_owned()));
            }
            by_event
                .entry(event.to_owned())
                .or_default()
                .insert(user.to_owned());
        }
        Ok(Self {
            by_event: Some(by_event),
        })
    }

    /// Whether a delivery of `event` with `properties` came from a trusted producer, for a
    /// consumer logged in as `own_user`.
    pub fn trusts(&self, event: &str, properties: &BasicProperties, own_user: &str) -> bool {
        let Some(producer) = producer(properties, own_user) else {
            return false;
        };
        match &self.by_event {
            None => producer == own_user,
            Some(by_event) => by_event
                .get(event)
                .is_some_and(|users| users.contains(&producer)),
        }
    }
}

/// Who produced a delivery: its `user_id`, or, when the consumer re-published it under its own
/// `user_id` (a retry), the producer it kept in a header. `None` without a `user_id`.
pub fn producer(properties: &BasicProperties, own_user: &str) -> Option<String> {
    let user_id = properties.user_id().as_ref()?.as_str();
    if user_id == own_user
        && let Some(original) = text_header(properties, ORIGINAL_USER_ID_HEADER)
    {
        return Some(original);
    }
    Some(user_id.to_owned())
}

fn known_events() -> Vec<&'static str> {
    EVENTS.iter().map(|(event, _)| *event).collect()
}

#[cfg(test)]
mod tests {
    use lapin::types::{AMQPValue, FieldTable, LongString};

    use super::*;

    fn from(user_id: Option<&str>, original: Option<&str>) -> BasicProperties {
        let mut properties = BasicProperties::default();
        if let Some(user_id) = user_id {
            properties = properties.with_user_id(user_id.into());
        }
        if let Some(original) = original {
            let mut headers = FieldTable::default();
            headers.insert(
                ORIGINAL_USER_ID_HEADER.into(),
                AMQPValue::LongString(LongString::from(original)),
            );
            properties = properties.with_headers(headers);
        }
        properties
    }

    #[test]
    fn unset_trusts_only_the_services_own_broker_user() {
        let trusted = TrustedProducers::parse("").expect("empty is unset");
        assert!(trusted.trusts("user_created", &from(Some("guest"), None), "guest"));
        assert!(!trusted.trusts("user_created", &from(Some("mallory"), None), "guest"));
        assert!(!trusted.trusts("user_created", &from(None, None), "guest"));
    }

    #[test]
    fn each_event_is_trusted_from_its_configured_producers_only() {
        let trusted = TrustedProducers::parse(
            "user_created=user_service, order_created=order_service,payment_processed=payment_service",
        )
        .expect("valid");
        let own = "order_service";
        assert!(trusted.trusts("user_created", &from(Some("user_service"), None), own));
        assert!(!trusted.trusts("user_created", &from(Some("payment_service"), None), own));
        assert!(!trusted.trusts("payment_processed", &from(Some("user_service"), None), own));
        // Its own retry of a user_created: the header names the producer.
        assert!(trusted.trusts("user_created", &from(Some(own), Some("user_service")), own));
        // The header counts only under the consumer's own user_id, which nobody else can set.
        assert!(!trusted.trusts(
            "user_created",
            &from(Some("mallory"), Some("user_service")),
            own
        ));
        assert!(!trusted.trusts("user_created", &from(Some(own), Some("mallory")), own));
    }

    #[test]
    fn an_event_may_have_several_producers() {
        let trusted =
            TrustedProducers::parse("user_created=a,user_created=b").expect("repeats are fine");
        assert!(trusted.trusts("user_created", &from(Some("b"), None), "x"));
    }

    #[test]
    fn malformed_entries_and_unknown_events_are_refused() {
        assert!(matches!(
            TrustedProducers::parse("user_created"),
            Err(InvalidTrustedProducers::Malformed(_))
        ));
        assert!(matches!(
            TrustedProducers::parse("user_created="),
            Err(InvalidTrustedProducers::Malformed(_))
        ));
        let unknown = TrustedProducers::parse("user_deleted=user_service").expect_err("unknown");
        assert_eq!(
            unknown,
            InvalidTrustedProducers::UnknownEvent("user_deleted".into())
        );
        assert!(unknown.to_string().contains("order_created"));
    }
}
