//! Hostile input (issue 11): what a client cannot do to the service however it calls it.
//!
//! - [`limits`]: too many calls, too long a call, too big a message (item 6).
//! - [`metrics_labels`]: made-up method paths cannot grow `/metrics` (item 7).
//! - [`logs`]: request strings cannot forge log lines; client errors are not logged as server
//!   errors nor with personal data (items 9 and 10).
//! - [`validation`]: every string is validated before a query, a reused `request_id` never hands
//!   out another request's user, names cannot hide or reorder text, a bad `x-request-id` is
//!   replaced (items 8, 11 and 12).

mod limits;
mod logs;
mod metrics_labels;
mod validation;
