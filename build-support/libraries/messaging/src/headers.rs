//! Reading the headers of a delivery: the one place that turns AMQP field values into text and
//! integers.

use lapin::{BasicProperties, types::AMQPValue};

/// The header `name` of `properties`, if present.
pub(crate) fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A text header of `properties`, if present.
pub fn text_header(properties: &BasicProperties, name: &str) -> Option<String> {
    header(properties, name).and_then(text)
}

/// An integer header of `properties`, if present.
pub fn integer_header(properties: &BasicProperties, name: &str) -> Option<i64> {
    header(properties, name).and_then(integer)
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, LongString, ShortString};

    use super::*;

    fn with(name: &str, value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(name.into(), value);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn text_reads_long_and_short_strings_only() {
        let long = with("a", AMQPValue::LongString(LongString::from("x")));
        let short = with("a", AMQPValue::ShortString(ShortString::from("y")));
        assert_eq!(text_header(&long, "a").as_deref(), Some("x"));
        assert_eq!(text_header(&short, "a").as_deref(), Some("y"));
        assert_eq!(
            text_header(&with("a", AMQPValue::LongLongInt(1)), "a"),
            None
        );
        assert_eq!(text_header(&long, "b"), None);
        assert_eq!(text_header(&BasicProperties::default(), "a"), None);
    }

    #[test]
    fn integers_of_every_width_read_alike() {
        for value in [
            AMQPValue::ShortShortInt(3),
            AMQPValue::ShortShortUInt(3),
            AMQPValue::ShortInt(3),
            AMQPValue::ShortUInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(3),
        ] {
            assert_eq!(integer_header(&with("n", value), "n"), Some(3));
        }
        let text = with("n", AMQPValue::LongString(LongString::from("3")));
        assert_eq!(integer_header(&text, "n"), None);
    }
}
