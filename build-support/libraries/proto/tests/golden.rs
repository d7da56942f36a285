//! Golden bytes: the wire format of every event, pinned. The expected bytes are written out from
//! the protobuf encoding rules (tag = field number << 3 | wire type; varints; length-delimited
//! strings and messages), independently of prost, so a renumbered, retyped or removed field, or
//! an enum value that moved, fails here before it reaches a consumer still running old code.

use prost::Message;
use prost_types::Timestamp;
use proto::{
    order::v1::OrderCreated,
    payment::v1::{PaymentProcessed, PaymentStatus},
    user::v1::{Plan, UserCreated},
};

/// Base-128 varint.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A varint field (wire type 0).
fn int(field: u64, value: u64) -> Vec<u8> {
    [varint(field << 3), varint(value)].concat()
}

/// A length-delimited field (wire type 2): strings, bytes, embedded messages.
fn bytes(field: u64, value: &[u8]) -> Vec<u8> {
    [
        varint((field << 3) | 2),
        varint(value.len() as u64),
        value.to_vec(),
    ]
    .concat()
}

const SECONDS: i64 = 1_764_325_800;
const NANOS: i32 = 123_000;

fn time() -> Timestamp {
    Timestamp {
        seconds: SECONDS,
        nanos: NANOS,
    }
}

/// `google.protobuf.Timestamp` as an embedded message in `field`.
fn time_field(field: u64) -> Vec<u8> {
    bytes(
        field,
        &[int(1, SECONDS as u64), int(2, NANOS as u64)].concat(),
    )
}

fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(event: M, expected: Vec<u8>) {
    assert_eq!(event.encode_to_vec(), expected, "encoding of {event:?}");
    assert_eq!(M::decode(expected.as_slice()).expect("decodes"), event);
}

#[test]
fn user_created_wire_format() {
    let event = UserCreated {
        user_id: "8c0f3a5e-0000-4000-8000-000000000001".into(),
        email: "ada@example.com".into(),
        name: "Ada".into(),
        plan: Plan::Pro.into(),
        create_time: Some(time()),
    };
    let expected = [
        bytes(1, b"8c0f3a5e-0000-4000-8000-000000000001"),
        bytes(2, b"ada@example.com"),
        bytes(3, b"Ada"),
        int(4, 2), // PLAN_PRO
        time_field(5),
    ]
    .concat();
    assert_wire(event, expected);
}

#[test]
fn order_created_wire_format() {
    let event = OrderCreated {
        order_id: "o-1".into(),
        user_id: "u-1".into(),
        user_email: "ada@example.com".into(),
        plan: Plan::Enterprise.into(),
        amount_minor: 9_999,
        currency: "USD".into(),
        create_time: Some(time()),
    };
    let expected = [
        bytes(1, b"o-1"),
        bytes(2, b"u-1"),
        bytes(3, b"ada@example.com"),
        int(4, 3), // PLAN_ENTERPRISE
        int(5, 9_999),
        bytes(6, b"USD"),
        time_field(7),
    ]
    .concat();
    assert_wire(event, expected);
}

#[test]
fn payment_processed_wire_format() {
    let event = PaymentProcessed {
        payment_id: "p-1".into(),
        order_id: "o-1".into(),
        user_id: "u-1".into(),
        status: PaymentStatus::Declined.into(),
        decline_reason: "card_declined".into(),
        amount_minor: 999,
        currency: "USD".into(),
        process_time: Some(time()),
    };
    let expected = [
        bytes(1, b"p-1"),
        bytes(2, b"o-1"),
        bytes(3, b"u-1"),
        int(4, 2), // PAYMENT_STATUS_DECLINED
        bytes(5, b"card_declined"),
        int(6, 999),
        bytes(7, b"USD"),
        time_field(8),
    ]
    .concat();
    assert_wire(event, expected);
}

#[test]
fn enum_numbers_are_stable() {
    assert_eq!(Plan::Unspecified as i32, 0);
    assert_eq!(Plan::Basic as i32, 1);
    assert_eq!(Plan::Pro as i32, 2);
    assert_eq!(Plan::Enterprise as i32, 3);
    assert_eq!(PaymentStatus::Unspecified as i32, 0);
    assert_eq!(PaymentStatus::Succeeded as i32, 1);
    assert_eq!(PaymentStatus::Declined as i32, 2);
}
