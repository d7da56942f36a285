//! Growing a batch with what the broker has already pushed, without waiting for more: an idle
//! consumer handles each message as it comes, a busy one pays one commit for many.

use futures_util::{FutureExt, StreamExt};
use lapin::{Consumer, message::Delivery};

/// Moves the deliveries already received on `deliveries` into `batch` until it holds `max`,
/// without waiting. Returns why the stream ended, when it did (what came before stays in
/// `batch`).
pub fn take_ready(
    deliveries: &mut Consumer,
    batch: &mut Vec<Delivery>,
    max: usize,
) -> Option<anyhow::Error> {
    while batch.len() < max {
        match deliveries.next().now_or_never() {
            Some(Some(Ok(delivery))) => batch.push(delivery),
            Some(Some(Err(error))) => return Some(error.into()),
            Some(None) => return Some(anyhow::anyhow!("the broker cancelled the consumer")),
            None => break,
        }
    }
    None
}
