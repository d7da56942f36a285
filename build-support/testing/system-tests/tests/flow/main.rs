//! The whole chain, end to end: exactly once in effect, whatever the broker redelivers, however
//! many users arrive at once, and whichever service is down for a while.

// Helpers are shared between test modules of one binary; `pub` there is crate-wide anyway.
#![allow(unreachable_pub)]

mod backpressure;
mod chain;
mod failures;
mod helpers;
mod outages;
mod permissions;
mod resilience;
