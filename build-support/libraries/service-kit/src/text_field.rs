//! The check every string field of a request passes before any query sees it: a bounded
//! length and no control characters. Postgres refuses NUL in text (the call would fail as
//! `INTERNAL`), and the other control characters have no place in ids, names or tokens and only
//! serve to forge log lines and terminal output.

use uuid::Uuid;

use crate::error::Violation;

/// Longest UUID text `uuid` reads: `urn:uuid:` and 36 hyphenated digits.
pub const MAX_UUID_CHARS: usize = 45;

/// What is wrong with `value` as a string field of at most `max_chars` characters, for a field
/// violation's description.
pub fn check(value: &str, max_chars: usize) -> Result<(), String> {
    // Counting characters walks the string; a string this many bytes long is too long anyway.
    if value.len() > max_chars.saturating_mul(4) || value.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// The request field `field`, trimmed, if it passes [`check`].
pub fn trimmed<'a>(
    field: &'static str,
    raw: &'a str,
    max_chars: usize,
) -> Result<&'a str, Violation> {
    let value = raw.trim();
    check(value, max_chars).map_err(|description| Violation::new(field, description))?;
    Ok(value)
}

/// A required UUID field of a request.
pub fn uuid(field: &'static str, raw: &str) -> Result<Uuid, Violation> {
    optional_uuid(field, raw)?.ok_or_else(|| Violation::new(field, "is required"))
}

/// An optional UUID field of a request: empty (or blank) means absent.
pub fn optional_uuid(field: &'static str, raw: &str) -> Result<Option<Uuid>, Violation> {
    let value = trimmed(field, raw, MAX_UUID_CHARS)?;
    if value.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(value).map(Some).map_err(|_| {
        Violation::new(
            field,
            "must be a UUID, like 1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_every_other_control_character_is_refused() {
        for value in [
            "\0",
            "a\0b",
            "\t",
            "a\nb",
            "\u{1b}[0m",
            "\u{7f}",
            "\u{85}",
            "\u{9f}",
        ] {
            assert_eq!(
                check(value, 100),
                Err("must not contain control characters".into()),
                "{value:?}"
            );
        }
    }

    #[test]
    fn the_limit_counts_characters_not_bytes() {
        assert_eq!(check(&"é".repeat(3), 3), Ok(()));
        assert_eq!(
            check(&"é".repeat(4), 3),
            Err("must be at most 3 characters".into())
        );
        assert!(check(&"x".repeat(1 << 20), 3).is_err());
    }

    #[test]
    fn fields_are_trimmed_before_they_are_checked() {
        assert_eq!(trimmed("f", "  abc\n", 3), Ok("abc"));
        let violation = trimmed("f", " a\0c ", 3).expect_err("NUL");
        assert_eq!(violation.field, "f");
    }

    #[test]
    fn uuid_fields_are_required_or_optional_and_must_parse() {
        let id = Uuid::new_v4();
        assert_eq!(uuid("id", &format!(" {id} ")), Ok(id));
        assert_eq!(uuid("id", &format!("urn:uuid:{id}")), Ok(id));
        assert_eq!(uuid("id", " "), Err(Violation::new("id", "is required")));
        assert_eq!(optional_uuid("id", ""), Ok(None));
        for bad in ["42", "\0", &"7".repeat(100_000)] {
            assert_eq!(uuid("id", bad).map_err(|v| v.field), Err("id"), "{bad:.9}");
        }
    }
}
