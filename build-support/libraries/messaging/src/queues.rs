//! The kind of queue every queue of the topology is declared as (`QUEUE_TYPE`), and the
//! arguments each role of queue gets with it.
//!
//! Quorum queues (the default) are replicated by Raft over the cluster's nodes: a message
//! confirmed to the publisher survives the loss of a minority of them, and a queue's leader moves
//! to a surviving node. With quorum queues:
//!
//! - every hop a retry or a dead letter makes through the broker (a retry queue's TTL expiring
//!   back into the work queue, a rejected message into the dead-letter queue) is
//!   `x-dead-letter-strategy=at-least-once`: the source queue keeps the message until the target
//!   queue confirmed it, so a node failure in between cannot lose it. RabbitMQ allows it only
//!   with `x-overflow=reject-publish`, which is set with it (no length limit is set, so nothing
//!   is refused for it);
//! - a work queue has `x-delivery-limit` [`DELIVERY_LIMIT`]: a message returned to the queue that
//!   many times is dead-lettered (to its dead-letter queue, with `x-death` reason
//!   `delivery_limit`), a backstop against a message that is redelivered forever, e.g. one that
//!   crashes its consumer;
//! - leaders are placed with `x-queue-leader-locator=balanced`, spread over the nodes rather than
//!   all on the node the first service happened to connect to.
//!
//! Classic queues (`QUEUE_TYPE=classic`) are declared exactly as before quorum queues were the
//! default, so an existing deployment keeps its queues.

use lapin::{
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString},
};

/// The queue type when none is configured.
pub const DEFAULT_QUEUE_TYPE: QueueType = QueueType::Quorum;

/// How many times a message may be returned to a quorum work queue before the broker
/// dead-letters it.
///
/// Our own retry policy never returns a message to its queue: a failed message is re-published
/// to a retry queue (and acked), so its attempts do not count here. What counts is every return:
/// on RabbitMQ 3.x a nack with requeue and a consumer's channel closing while the message was
/// unacknowledged in its prefetch. A consumer returns messages only when a dependency stays
/// unavailable (it holds its batch and tries again for up to a minute before returning it, and
/// stops consuming while the database is down), when its connection is lost, and when it
/// stops: 100 is about 100 minutes of a dependency failing while the database answers, or 100
/// connection losses while that one message was in flight, far past any incident the services
/// ride out, yet a message that crashes every consumer it reaches is parked after 100 crashes.
pub const DELIVERY_LIMIT: i64 = 100;

/// `QUEUE_TYPE`: what the topology's queues are declared as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated (Raft), at-least-once dead-lettering, a delivery limit.
    #[default]
    Quorum,
    /// A single node's queue, as before quorum queues were the default.
    Classic,
}

/// An invalid `QUEUE_TYPE`.
#[derive(Debug, thiserror::Error)]
#[error("QUEUE_TYPE {0:?} is invalid: use quorum or classic")]
pub struct InvalidQueueType(String);

impl std::str::FromStr for QueueType {
    type Err = InvalidQueueType;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            _ => Err(InvalidQueueType(raw.to_owned())),
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a queue is for, which decides its arguments.
#[derive(Debug, Clone, Copy)]
pub enum QueueRole<'a> {
    /// A consumer's queue: dead-letters through `exchange` under `routing_key`.
    Work {
        exchange: &'a str,
        routing_key: &'a str,
    },
    /// A retry queue: holds each message for `ttl_ms`, then dead-letters it through `exchange`
    /// under `routing_key` (back into its work queue).
    Retry {
        ttl_ms: i64,
        exchange: &'a str,
        routing_key: &'a str,
    },
    /// A queue that dead-letters nowhere: a dead-letter queue, holding what failed until an
    /// operator looks.
    Plain,
}

impl QueueType {
    /// The setting's value: `quorum` or `classic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }

    /// The declaration arguments of a queue of `role`.
    pub fn arguments(self, role: QueueRole<'_>) -> FieldTable {
        let mut arguments = FieldTable::default();
        let mut text = |key: &str, value: &str| {
            arguments.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
        };
        let dead_letters_to = match role {
            QueueRole::Work {
                exchange,
                routing_key,
            }
            | QueueRole::Retry {
                exchange,
                routing_key,
                ..
            } => Some((exchange, routing_key)),
            QueueRole::Plain => None,
        };
        if let Some((exchange, routing_key)) = dead_letters_to {
            text("x-dead-letter-exchange", exchange);
            text("x-dead-letter-routing-key", routing_key);
        }
        if self == Self::Quorum {
            text("x-queue-type", "quorum");
            text("x-queue-leader-locator", "balanced");
            if dead_letters_to.is_some() {
                text("x-dead-letter-strategy", "at-least-once");
                text("x-overflow", "reject-publish");
            }
        }
        if let QueueRole::Retry { ttl_ms, .. } = role {
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        }
        if let (Self::Quorum, QueueRole::Work { .. }) = (self, role) {
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
        }
        arguments
    }
}

/// A queue that exists already with other arguments than the ones declared (another type, or
/// arguments of another version): the broker refuses the declaration (`PRECONDITION_FAILED`,
/// `inequivalent arg`), and the service cannot go on until an operator decides.
#[derive(Debug, thiserror::Error)]
#[error(
    "queue {queue:?} already exists with other arguments than QUEUE_TYPE={wanted} declares \
     (the broker says: {broker}). {advice}"
)]
pub struct InequivalentQueue {
    pub queue: String,
    pub wanted: QueueType,
    pub broker: String,
    advice: &'static str,
}

impl InequivalentQueue {
    /// The declaration of `queue` as `wanted` failed with `error`: `Some` when it failed because
    /// the queue exists with other arguments.
    pub fn from_error(error: &lapin::Error, queue: &str, wanted: QueueType) -> Option<Self> {
        let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
            return None;
        };
        if amqp.kind() != &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
            return None;
        }
        let broker = amqp.get_message().to_string();
        if !broker.contains("inequivalent arg") {
            return None;
        }
        let advice = if broker.contains("x-queue-type") {
            match wanted {
                QueueType::Quorum => {
                    "It is a classic queue: set QUEUE_TYPE=classic to keep using it, or migrate \
                     the deployment to quorum queues (build-support/docs/operations.md, \
                     Migrating to quorum queues)"
                }
                QueueType::Classic => {
                    "It is a quorum queue: set QUEUE_TYPE=quorum (the default) to use it"
                }
            }
        } else {
            "It was declared by another version or configuration: drain it and delete it so \
             that it is declared again (build-support/docs/operations.md, Migrating to quorum \
             queues), or apply the change with a RabbitMQ policy"
        };
        Some(Self {
            queue: queue.to_owned(),
            wanted,
            broker,
            advice,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(arguments: &FieldTable) -> Vec<String> {
        let mut keys: Vec<String> = arguments
            .inner()
            .keys()
            .map(|key| key.as_str().to_owned())
            .collect();
        keys.sort();
        keys
    }

    const WORK: QueueRole<'static> = QueueRole::Work {
        exchange: "dlx",
        routing_key: "q",
    };

    #[test]
    fn quorum_is_the_default_and_both_types_parse() {
        assert_eq!(QueueType::default(), DEFAULT_QUEUE_TYPE);
        assert_eq!(
            "quorum".parse::<QueueType>().expect("valid"),
            QueueType::Quorum
        );
        assert_eq!(
            " Classic ".parse::<QueueType>().expect("valid"),
            QueueType::Classic
        );
        assert!("stream".parse::<QueueType>().is_err());
    }

    #[test]
    fn a_quorum_work_queue_dead_letters_at_least_once_with_a_delivery_limit() {
        let arguments = QueueType::Quorum.arguments(WORK);
        assert_eq!(
            keys(&arguments),
            [
                "x-dead-letter-exchange",
                "x-dead-letter-routing-key",
                "x-dead-letter-strategy",
                "x-delivery-limit",
                "x-overflow",
                "x-queue-leader-locator",
                "x-queue-type",
            ]
        );
        assert_eq!(
            arguments.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(DELIVERY_LIMIT))
        );
    }

    #[test]
    fn quorum_retry_and_dead_letter_queues_have_no_delivery_limit() {
        let retry = QueueType::Quorum.arguments(QueueRole::Retry {
            ttl_ms: 1000,
            exchange: "dlx",
            routing_key: "q.requeue",
        });
        assert!(keys(&retry).contains(&"x-dead-letter-strategy".to_owned()));
        assert!(keys(&retry).contains(&"x-message-ttl".to_owned()));
        assert!(!keys(&retry).contains(&"x-delivery-limit".to_owned()));
        assert_eq!(
            keys(&QueueType::Quorum.arguments(QueueRole::Plain)),
            ["x-queue-leader-locator", "x-queue-type"]
        );
    }

    #[test]
    fn classic_queues_are_declared_as_before() {
        assert_eq!(
            keys(&QueueType::Classic.arguments(WORK)),
            ["x-dead-letter-exchange", "x-dead-letter-routing-key"]
        );
        assert!(
            QueueType::Classic
                .arguments(QueueRole::Plain)
                .inner()
                .is_empty()
        );
    }
}
