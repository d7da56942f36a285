//! What a delivery must be before it is even decoded: headers light enough to forward, and a
//! producer trusted for its event type.

use proto::Event;

use super::{EventConsumer, Handler, Unsettled};
use crate::{limits::HeaderWeight, publisher::Publisher, retry::FailureKind};

impl<H: Handler> EventConsumer<H> {
    /// Checks what a delivery carries before anything else touches it: headers too heavy to
    /// forward are rejected (the broker dead-letters the message, with `x-death`: re-publishing
    /// it with our headers could exceed `frame_max` and cost the connection), and an event from
    /// an untrusted producer is dead-lettered as `untrusted`. Returns the delivery, with its
    /// attempts so far (its header, at most the number of retries), when it may go on.
    pub(super) async fn admit(
        &self,
        unsettled: Unsettled,
        publisher: &Publisher,
    ) -> Option<(Unsettled, u32)> {
        let delivery = unsettled.delivery();
        let weight = HeaderWeight::of(delivery.properties.headers().as_ref());
        if !weight.forwardable() {
            tracing::error!(
                consumer = self.name,
                queue = self.subscription.queue,
                depth = weight.depth,
                bytes = weight.bytes,
                "headers too deep or too big to forward; rejecting the message to the dead-letter queue"
            );
            let kind = FailureKind::OversizedHeaders;
            self.count_refused(kind);
            self.count_dead_letter(kind);
            unsettled.reject().await;
            return None;
        }
        let attempts = self.bus.topology().retry().attempts_of(delivery);
        if !self.bus.trusts(H::Event::ROUTING_KEY, &delivery.properties) {
            let producer = self.bus.producer_of(&delivery.properties);
            // The dead letter's line says who sent it.
            let error = format!(
                "{} is not trusted to produce {}",
                producer.as_deref().unwrap_or("a publisher without user_id"),
                H::Event::ROUTING_KEY
            );
            self.count_refused(FailureKind::Untrusted);
            self.dead_letter(
                unsettled,
                publisher,
                FailureKind::Untrusted,
                attempts,
                &error,
            )
            .await;
            return None;
        }
        Some((unsettled, attempts))
    }

    /// Counts a delivery refused before decoding, under its failure kind.
    pub(super) fn count_refused(&self, kind: FailureKind) {
        metrics::counter!(
            "events_consumed_total",
            "consumer" => self.name, "type" => H::Event::TYPE_NAME, "outcome" => kind.as_str()
        )
        .increment(1);
    }
}
