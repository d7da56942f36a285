//! What a hostile message's headers can do to a consumer, and the bounds that keep it harmless.
//!
//! AMQP headers are a field table whose values may be tables and arrays, nested without a limit
//! in the protocol. The AMQP library decodes them recursively on its I/O thread, before any code
//! of ours runs, so the depth a frame can carry must fit that thread's stack: the shallowest
//! nesting level is an empty-named field array (5 bytes: its type and its length), so a frame
//! of `frame_max` bytes carries at most [`deepest_nesting`] levels. Measured (this module's
//! tests parse and drop that depth), decoding takes about 2.5 kB of stack per level in a release
//! build and 10 kB in a debug build: [`THREAD_STACK_BYTES`] is twice that for RabbitMQ's
//! default `frame_max` of 128 KiB ([`MAX_FRAME_BYTES`]). Every thread of a service gets it (the
//! binaries set `RUST_MIN_STACK`; see `service_kit::stack`), since dropping or cloning such a
//! value recurses too; a connection that negotiates a larger `frame_max` is refused.
//!
//! A message that decoded can still be too heavy to forward: re-publishing it to a retry or
//! dead-letter queue adds our failure headers, and a frame over `frame_max` makes the broker
//! close the whole connection. [`HeaderWeight`] measures headers without recursion; a message
//! over [`MAX_FORWARDED_DEPTH`] or [`MAX_FORWARDED_BYTES`] is never forwarded, only rejected,
//! which the broker dead-letters on its own (with `x-death`).

use lapin::types::{AMQPValue, FieldTable};

/// The largest `frame_max` a service accepts: RabbitMQ's default. A broker configured with a
/// larger one is refused at connect, because its frames could nest deeper than the stack holds.
pub const MAX_FRAME_BYTES: u32 = 131_072;

/// The stack of every thread of a service: twice what decoding and dropping headers nested
/// [`deepest_nesting`]`(`[`MAX_FRAME_BYTES`]`)` levels deep was measured to take. Reserved
/// address space, not memory: a thread only touches the pages it uses.
pub const THREAD_STACK_BYTES: usize = if cfg!(debug_assertions) {
    512 << 20
} else {
    128 << 20
};

/// Deepest nesting of headers a consumer forwards (to a retry or dead-letter queue) itself; our
/// own headers are flat, the broker's `x-death` is three levels deep.
pub const MAX_FORWARDED_DEPTH: usize = 8;

/// Largest encoded headers a consumer forwards itself: far below any `frame_max`, with room for
/// the failure headers it adds (about 1.5 kB).
pub const MAX_FORWARDED_BYTES: usize = 32 * 1024;

/// The deepest nesting of field values a frame of `frame_max` bytes can carry: a content header
/// frame (8 bytes of framing, 14 of class, weight, body size and flags) whose headers table
/// (4 bytes of length) holds one entry with a one-letter name (2 bytes) whose value is field
/// arrays nested in each other, 5 bytes each.
pub const fn deepest_nesting(frame_max: u32) -> usize {
    (frame_max as usize).saturating_sub(8 + 14 + 4 + 2) / 5
}

/// Makes sure every thread this process spawns gets [`THREAD_STACK_BYTES`]: the Rust runtime
/// reads `RUST_MIN_STACK` once, at the first thread it spawns, and a running process cannot set
/// it for itself safely, so without it the binary runs itself again, in place (same pid,
/// arguments and environment), with it set. Call it first thing in `main`, before any runtime.
/// Returns only when the variable is already set high enough; otherwise only if running itself
/// again failed.
pub fn ensure_thread_stacks() -> std::io::Result<()> {
    let set = std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|raw| raw.trim().parse::<usize>().ok());
    if set.is_some_and(|bytes| bytes >= THREAD_STACK_BYTES) {
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let mut arguments = std::env::args_os();
    // The running binary itself, even if its file was replaced since it started.
    let mut command = std::process::Command::new("/proc/self/exe");
    if let Some(name) = arguments.next() {
        command.arg0(name);
    }
    Err(command
        .args(arguments)
        .env("RUST_MIN_STACK", THREAD_STACK_BYTES.to_string())
        .exec())
}

/// How deep and how big a headers table is, as encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeaderWeight {
    /// Nesting levels: 1 for a flat table, 0 for no headers.
    pub depth: usize,
    /// Encoded bytes, the table's own length prefix included.
    pub bytes: usize,
}

impl HeaderWeight {
    /// Weighs `headers` without recursion (a hostile table may be nested thousands of levels).
    pub fn of(headers: Option<&FieldTable>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        let mut weight = Self {
            depth: 1,
            bytes: table_bytes(headers),
        };
        // Every nested value still to visit, with its depth.
        let mut pending: Vec<(&AMQPValue, usize)> =
            headers.inner().values().map(|value| (value, 1)).collect();
        while let Some((value, depth)) = pending.pop() {
            weight.bytes += value_bytes(value);
            match value {
                AMQPValue::FieldTable(table) => {
                    weight.depth = weight.depth.max(depth + 1);
                    weight.bytes += table_bytes(table);
                    pending.extend(table.inner().values().map(|value| (value, depth + 1)));
                }
                AMQPValue::FieldArray(array) => {
                    weight.depth = weight.depth.max(depth + 1);
                    pending.extend(array.as_slice().iter().map(|value| (value, depth + 1)));
                }
                _ => {}
            }
        }
        weight
    }

    /// Whether a message with these headers may be re-published by a consumer.
    pub fn forwardable(&self) -> bool {
        self.depth <= MAX_FORWARDED_DEPTH && self.bytes <= MAX_FORWARDED_BYTES
    }
}

/// A table's length prefix and its entries' names (their values are counted one by one).
fn table_bytes(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .keys()
        .map(|name| 1 + name.as_str().len())
        .sum::<usize>()
}

/// A value's type byte and its own bytes, without those of the values nested in it.
fn value_bytes(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(text) => 1 + text.as_str().len(),
        AMQPValue::LongString(text) => 4 + text.as_bytes().len(),
        AMQPValue::ByteArray(bytes) => 4 + bytes.as_slice().len(),
        // The length prefix; the entries are counted as they are visited.
        AMQPValue::FieldArray(_) => 4,
        AMQPValue::FieldTable(_) | AMQPValue::Void => 0,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString, parsing::parse_field_table};

    use super::*;

    /// A headers table encoded as on the wire: one entry, `x`, whose value is field arrays
    /// nested `depth` levels deep, built without recursion.
    fn deepest_headers(depth: usize) -> Vec<u8> {
        let value = 5 * depth;
        let mut bytes = Vec::with_capacity(4 + 2 + value);
        bytes.extend_from_slice(&u32::try_from(2 + value).expect("small").to_be_bytes());
        bytes.extend_from_slice(&[1, b'x']);
        for level in 0..depth {
            bytes.push(b'A');
            let inner = 5 * (depth - 1 - level);
            bytes.extend_from_slice(&u32::try_from(inner).expect("small").to_be_bytes());
        }
        bytes
    }

    #[test]
    fn the_deepest_headers_a_frame_carries_fill_it() {
        let depth = deepest_nesting(MAX_FRAME_BYTES);
        let frame = 8 + 14 + deepest_headers(depth).len();
        assert!(frame <= MAX_FRAME_BYTES as usize, "{frame}");
        assert!(
            frame + 5 > MAX_FRAME_BYTES as usize,
            "one level more would fit"
        );
    }

    /// The measurement behind [`THREAD_STACK_BYTES`]: the deepest headers a frame carries decode
    /// and drop on a thread of that stack, as on the AMQP library's I/O thread (a stack overflow
    /// would abort the test binary).
    #[test]
    fn the_deepest_headers_a_frame_carries_decode_on_a_service_thread() {
        let encoded = deepest_headers(deepest_nesting(MAX_FRAME_BYTES));
        let weight = std::thread::Builder::new()
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || {
                let (rest, table) = parse_field_table(encoded.as_slice()).expect("it decodes");
                assert!(rest.is_empty());
                let weight = HeaderWeight::of(Some(&table));
                drop(table);
                weight
            })
            .expect("a thread")
            .join()
            .expect("no panic");
        assert_eq!(weight.depth, deepest_nesting(MAX_FRAME_BYTES) + 1);
        assert!(!weight.forwardable());
    }

    #[test]
    fn ordinary_headers_are_light() {
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(LongString::from("00-abc-def-01")),
        );
        headers.insert("attempts".into(), AMQPValue::LongLongInt(2));
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        let weight = HeaderWeight::of(Some(&headers));
        assert_eq!(weight.depth, 3);
        // The table's length; each name (length and text) and value (type and bytes); x-death is
        // an array (length) of one table (length, one name, one value).
        let x_death = (1 + 7) + (1 + 4) + (1 + 4 + (1 + 5)) + (1 + 8);
        assert_eq!(
            weight.bytes,
            4 + (1 + 11 + 1 + 4 + 13) + (1 + 8 + 1 + 8) + x_death
        );
        assert!(weight.forwardable());
        assert_eq!(HeaderWeight::of(None), HeaderWeight::default());
    }

    #[test]
    fn big_or_deep_headers_are_not_forwarded() {
        let mut big = FieldTable::default();
        big.insert(
            "padding".into(),
            AMQPValue::LongString(LongString::from("x".repeat(MAX_FORWARDED_BYTES))),
        );
        assert!(!HeaderWeight::of(Some(&big)).forwardable());

        let mut value = AMQPValue::Boolean(true);
        for _ in 0..MAX_FORWARDED_DEPTH {
            value = AMQPValue::FieldArray(FieldArray::from(vec![value]));
        }
        let mut deep = FieldTable::default();
        deep.insert("deep".into(), value);
        let weight = HeaderWeight::of(Some(&deep));
        assert_eq!(weight.depth, MAX_FORWARDED_DEPTH + 1);
        assert!(!weight.forwardable());
    }
}
