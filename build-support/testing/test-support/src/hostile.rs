//! Hostile input every service's `hostile` tests send: forged page tokens with times Postgres
//! cannot hold, strings with control characters, `x-request-id` values the server must replace,
//! and the assertions that go with them.

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic_types::StatusExt;
use uuid::Uuid;

/// The earliest time Postgres' `timestamptz` holds (4714-11-24 00:00 UTC BC, Julian day 0), in
/// microseconds since the Unix epoch.
pub const POSTGRES_MIN_MICROS: i64 = -210_866_803_200_000_000;

/// Times, in microseconds since the Unix epoch, that a time type can hold but Postgres cannot:
/// one microsecond before its earliest, and two far before it (the last near chrono's
/// earliest, year -262144).
pub const TIMES_POSTGRES_CANNOT_HOLD: [i64; 3] = [
    POSTGRES_MIN_MICROS - 1,
    -3_000_000_000_000_000_000,
    -8_000_000_000_000_000_000,
];

/// A page token as the services encode it (16 hex digits of microseconds, then the id), for a
/// row created `micros` after the Unix epoch.
pub fn page_token_at(micros: i64) -> String {
    format!("{:016x}{}", micros.cast_unsigned(), Uuid::new_v4().simple())
}

/// Strings with control characters that a text field must refuse: NUL, C0, DEL and C1.
pub const WITH_CONTROL_CHARACTERS: [&str; 6] = [
    "\0",
    "abc\0def",
    "line\nbreak",
    "\u{1b}[31mred",
    "del\u{7f}",
    "next\u{85}line",
];

/// Strings no id or text field takes: [`WITH_CONTROL_CHARACTERS`], and one far longer than any
/// id (yet well under the request size limit, so the field is refused, not the message).
pub fn bad_strings() -> Vec<String> {
    WITH_CONTROL_CHARACTERS
        .into_iter()
        .map(str::to_owned)
        .chain(["7".repeat(10_000)])
        .collect()
}

/// `x-request-id` values the server must replace with one of its own: too long, not ASCII,
/// with a control character, with a space.
pub fn request_ids_to_replace() -> Vec<AsciiMetadataValue> {
    vec![
        "r".repeat(200).parse().expect("visible ASCII"),
        AsciiMetadataValue::try_from("caf\u{e9}-\u{202e}".as_bytes()).expect("obs-text bytes"),
        AsciiMetadataValue::try_from(b"tab\there".as_slice()).expect("a tab is allowed"),
        "two words".parse().expect("visible ASCII"),
    ]
}

/// A request carrying `x-request-id: value`.
pub fn with_request_id<T>(message: T, value: &AsciiMetadataValue) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-request-id", value.clone());
    request
}

/// The `x-request-id` a response carries; panics when there is none or it is not ASCII.
pub fn response_request_id(metadata: &MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("the response echoes an x-request-id")
        .to_str()
        .expect("an ASCII x-request-id")
        .to_owned()
}

/// Asserts that the response did not echo `sent` but a request id the server generated.
pub fn assert_request_id_replaced(sent: &AsciiMetadataValue, response: &MetadataMap) -> String {
    let echoed = response_request_id(response);
    assert!(echoed.as_bytes() != sent.as_bytes(), "{sent:?} was kept");
    assert!(
        Uuid::parse_str(&echoed).is_ok(),
        "{echoed:?} is not a generated UUID"
    );
    echoed
}

/// The fields an `INVALID_ARGUMENT` status's `google.rpc.BadRequest` names, in order; panics
/// on any other status.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "{}",
        status.message()
    );
    status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries a BadRequest")
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect()
}
