//! The flows this instance started and has not seen end, counted where they start and where
//! they end: a flow starts when a CreateUser call creates a user, and ends when the user's
//! `payment_processed` is seen (see [`crate::completions`]).
//!
//! A call reserves a [`Slot`] before it is written, so a burst cannot overshoot the limit while
//! its calls are written. The slot is released when the call creates no user (refused by the
//! database, failed, or a replay of an earlier call's `request_id`), and otherwise tracks the new
//! user's flow until its end. A flow whose end never comes (a charge dead-lettered, an event
//! lost) is forgotten once it is older than the expiry; so are the flows accepted before the
//! watcher of the ends subscribed again, since it may have missed theirs. Reserved slots and
//! tracked flows together never exceed the limit, so neither does the memory they take.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use uuid::Uuid;

/// The flows in flight of this instance, up to a limit.
#[derive(Debug)]
pub struct FlowsInFlight {
    limit: u64,
    /// How long a flow is tracked without seeing its end.
    expiry: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Slots of calls being written.
    reserved: u64,
    /// The users whose flows run, with when each was tracked.
    running: HashMap<Uuid, Instant>,
    /// Bumped each time every flow accepted so far is forgotten; a slot reserved before then
    /// tracks nothing.
    generation: u64,
}

/// Why tracked flows were forgotten, the `reason` label of `create_user_flows_forgotten_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forgotten {
    /// Older than the expiry.
    Expired,
    /// Accepted before the watcher subscribed again.
    Resubscribed,
}

impl Forgotten {
    fn count(self, flows: u64) {
        if flows > 0 {
            let reason = match self {
                Self::Expired => "expired",
                Self::Resubscribed => "resubscribed",
            };
            metrics::counter!("create_user_flows_forgotten_total", "reason" => reason)
                .increment(flows);
        }
    }
}

impl FlowsInFlight {
    /// Up to `limit` flows in flight, each tracked for at most `expiry`.
    pub fn new(limit: u64, expiry: Duration) -> Arc<Self> {
        Arc::new(Self {
            limit,
            expiry,
            state: Mutex::new(State::default()),
        })
    }

    /// A slot for one more flow, unless `limit` are in flight (reserved or tracked) already.
    pub fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let mut state = self.state();
        if state.reserved + state.running.len() as u64 >= self.limit {
            return None;
        }
        state.reserved += 1;
        Some(Slot(Some(Reserved {
            flows: Arc::clone(self),
            generation: state.generation,
        })))
    }

    /// The flows in flight: slots reserved and flows tracked.
    pub fn count(&self) -> u64 {
        let state = self.state();
        state.reserved + state.running.len() as u64
    }

    /// The flow of `user_id` ended. Whether it was tracked here (not another instance's, nor
    /// forgotten).
    pub fn complete(&self, user_id: Uuid) -> bool {
        let ended = self.state().running.remove(&user_id).is_some();
        if ended {
            metrics::counter!("create_user_flows_completed_total").increment(1);
        }
        ended
    }

    /// Forgets the flows tracked for longer than the expiry at `now`; how many.
    pub fn expire(&self, now: Instant) -> u64 {
        let mut state = self.state();
        let before = state.running.len();
        state
            .running
            .retain(|_, tracked| now.saturating_duration_since(*tracked) <= self.expiry);
        let expired = (before - state.running.len()) as u64;
        drop(state);
        Forgotten::Expired.count(expired);
        expired
    }

    /// Forgets every flow accepted so far, tracked or still being written: the watcher
    /// subscribed again and may have missed their ends. How many were tracked.
    pub fn forget_accepted(&self) -> u64 {
        let mut state = self.state();
        let forgotten = state.running.len() as u64;
        state.running.clear();
        state.generation += 1;
        drop(state);
        Forgotten::Resubscribed.count(forgotten);
        forgotten
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state whole, so one made by a thread that panicked is too.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One CreateUser call's place among the flows in flight, from before its write: released when
/// dropped, unless [`Slot::track`] made it the new user's flow. Without a limit, a slot holds
/// nothing.
#[derive(Debug)]
pub struct Slot(Option<Reserved>);

#[derive(Debug)]
struct Reserved {
    flows: Arc<FlowsInFlight>,
    /// The flows' generation when the slot was reserved.
    generation: u64,
}

impl Slot {
    /// A slot that holds nothing: no limit applies.
    pub fn unlimited() -> Self {
        Self(None)
    }

    /// The call created `user_id`: the slot becomes its flow, tracked until its end is seen or it
    /// expires. A slot reserved before the flows were last forgotten is forgotten at once: the
    /// watcher subscribed since the call began, and may have missed its end.
    pub fn track(self, user_id: Uuid) {
        self.track_at(user_id, Instant::now());
    }

    /// [`Slot::track`], as of `now`.
    fn track_at(mut self, user_id: Uuid, now: Instant) {
        let Some(reserved) = self.0.take() else {
            return;
        };
        let mut state = reserved.flows.state();
        state.reserved -= 1;
        if state.generation == reserved.generation {
            state.running.insert(user_id, now);
        } else {
            drop(state);
            Forgotten::Resubscribed.count(1);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(reserved) = self.0.take() {
            reserved.flows.state().reserved -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: Duration = Duration::from_secs(60);

    #[test]
    fn slots_are_reserved_up_to_the_limit_and_a_released_one_is_free_again() {
        let flows = FlowsInFlight::new(2, EXPIRY);
        let first = flows.reserve().expect("a first slot");
        let _second = flows.reserve().expect("a second slot");
        assert!(flows.reserve().is_none(), "two reserved is the limit");

        drop(first);

        assert_eq!(flows.count(), 1);
        assert!(flows.reserve().is_some(), "the released slot is free");
    }

    #[test]
    fn a_tracked_flow_holds_its_slot_until_it_completes() {
        let flows = FlowsInFlight::new(1, EXPIRY);
        let user = Uuid::new_v4();
        flows.reserve().expect("a slot").track(user);
        assert_eq!(flows.count(), 1);
        assert!(flows.reserve().is_none(), "the flow holds the only slot");

        assert!(
            !flows.complete(Uuid::new_v4()),
            "another user's end frees nothing"
        );
        assert!(flows.complete(user));

        assert_eq!(flows.count(), 0);
        assert!(!flows.complete(user), "an end seen twice counts once");
        assert!(flows.reserve().is_some());
    }

    #[test]
    fn a_flow_older_than_the_expiry_is_forgotten() {
        let flows = FlowsInFlight::new(3, EXPIRY);
        let (old, young) = (Uuid::new_v4(), Uuid::new_v4());
        let start = Instant::now();
        flows.reserve().expect("a slot").track_at(old, start);
        flows
            .reserve()
            .expect("a slot")
            .track_at(young, start + EXPIRY / 2);
        let _writing = flows.reserve().expect("a slot being written");

        assert_eq!(
            flows.expire(start + EXPIRY),
            0,
            "not older than the expiry yet"
        );
        let expired = flows.expire(start + EXPIRY + Duration::from_secs(1));

        assert_eq!(
            expired, 1,
            "the old flow, not the younger one nor the reservation"
        );
        assert_eq!(flows.count(), 2);
        assert!(!flows.complete(old), "an expired flow is no longer tracked");
        assert!(flows.complete(young));
    }

    #[test]
    fn resubscribing_forgets_every_flow_accepted_before_including_those_being_written() {
        let flows = FlowsInFlight::new(3, EXPIRY);
        let user = Uuid::new_v4();
        flows.reserve().expect("a slot").track(user);
        let writing = flows.reserve().expect("a slot being written");

        assert_eq!(flows.forget_accepted(), 1);
        assert_eq!(
            flows.count(),
            1,
            "the call being written still holds its slot"
        );
        writing.track(Uuid::new_v4());

        assert_eq!(flows.count(), 0, "its flow was accepted before: forgotten");
        assert!(!flows.complete(user));
        let after = Uuid::new_v4();
        flows.reserve().expect("a slot").track(after);
        assert_eq!(flows.count(), 1, "a flow accepted after is tracked");
        assert!(flows.complete(after));
    }

    #[test]
    fn an_unlimited_slot_tracks_nothing() {
        let flows = FlowsInFlight::new(1, EXPIRY);
        Slot::unlimited().track(Uuid::new_v4());
        drop(Slot::unlimited());
        assert_eq!(flows.count(), 0);
    }
}
