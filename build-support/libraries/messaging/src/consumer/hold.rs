//! A batch that found a dependency unavailable is held and tried again after growing pauses,
//! instead of going back to its queue at once: each return to a quorum queue counts towards its
//! delivery limit ([`crate::queues::DELIVERY_LIMIT`]), a pause does not.

use std::time::Duration;

use super::{EventConsumer, HOLD_BUDGET, Handler, LONGEST_HOLD_PAUSE, UNAVAILABLE_PAUSE};

/// A batch held while a dependency is unavailable: how long it has waited so far, and how many
/// pauses.
#[derive(Debug, Default)]
pub(super) struct Hold {
    waited: Duration,
    pauses: u32,
}

impl Hold {
    /// The next pause: one second, doubling up to [`LONGEST_HOLD_PAUSE`].
    fn next_pause(&self) -> Duration {
        UNAVAILABLE_PAUSE
            .saturating_mul(1 << self.pauses.min(8))
            .min(LONGEST_HOLD_PAUSE)
    }
}

impl<H: Handler> EventConsumer<H> {
    /// Whether to try a batch of `batch` deliveries again, after a pause, that found a
    /// dependency unavailable: yes while the gate is open, the consumer is not stopping and the
    /// hold lasted less than [`HOLD_BUDGET`]; the pause is taken before saying yes.
    pub(super) async fn hold_on(
        &self,
        hold: &mut Hold,
        batch: usize,
        error: &anyhow::Error,
    ) -> bool {
        let pause = hold.next_pause();
        if hold.waited + pause > HOLD_BUDGET || !*self.gate.borrow() || self.stop.is_cancelled() {
            return false;
        }
        if hold.pauses == 0 {
            tracing::warn!(
                consumer = self.name,
                batch,
                error = format!("{error:#}"),
                "dependency unavailable; holding the batch and trying again"
            );
        }
        tokio::select! {
            _ = self.stop.cancelled() => return false,
            _ = tokio::time::sleep(pause) => {}
        }
        hold.waited += pause;
        hold.pauses += 1;
        *self.gate.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_pauses_one_second_doubling_to_eight_and_stays_within_its_budget() {
        let mut hold = Hold::default();
        let mut pauses = Vec::new();
        while hold.waited + hold.next_pause() <= HOLD_BUDGET {
            let pause = hold.next_pause();
            pauses.push(pause.as_secs());
            hold.waited += pause;
            hold.pauses += 1;
        }
        assert_eq!(pauses, [1, 2, 4, 8, 8, 8, 8, 8, 8]);
        assert!(hold.waited <= HOLD_BUDGET);
    }
}
