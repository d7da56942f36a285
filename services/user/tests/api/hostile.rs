//! Hostile input (issue 11): what a client cannot do to the service however it calls it.
//!
//! - [`limits`]: too many calls, too long a call, too big a message (item 6).
//! - [`metrics_labels`]: made-up method paths cannot grow `/metrics` (item 7).

mod limits;
mod metrics_labels;
