//! Conversions between database times and `google.protobuf.Timestamp`.

use chrono::{DateTime, Utc};

/// A UTC time as a protobuf timestamp.
pub fn to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_second_precision_is_kept() {
        let time = DateTime::from_timestamp(1_700_000_000, 123_456_000).expect("valid");
        let timestamp = to_timestamp(time);
        assert_eq!(
            (timestamp.seconds, timestamp.nanos),
            (1_700_000_000, 123_456_000)
        );
    }
}
