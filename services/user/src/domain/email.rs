//! A validated e-mail address.

/// Longest address (RFC 5321's path limit less the angle brackets).
const MAX_BYTES: usize = 254;
const MAX_LOCAL_BYTES: usize = 64;
const MAX_LABEL_BYTES: usize = 63;
/// The characters RFC 5322 allows in an unquoted local part, besides letters and digits.
const LOCAL_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~.";

/// A trimmed e-mail address of the common `local@domain.tld` form: an unquoted ASCII local part
/// and a domain of at least two DNS labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Trims and validates; the error describes what is wrong, for a field violation.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email = raw.trim();
        if email.is_empty() {
            return Err("is required".into());
        }
        if email.len() > MAX_BYTES {
            return Err(format!("must be at most {MAX_BYTES} bytes"));
        }
        let valid = email
            .split_once('@')
            .is_some_and(|(local, domain)| valid_local(local) && valid_domain(domain));
        if valid {
            Ok(Self(email.to_owned()))
        } else {
            Err("must be a valid e-mail address, like ada@example.com".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_local(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_BYTES
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c))
}

fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_BYTES
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_addresses_are_accepted_and_trimmed() {
        for raw in [
            "ada@example.com",
            "  ada.lovelace+decline@mail.example.co.uk ",
            "o'brien@example.org",
            "x@a-b.io",
        ] {
            let email = Email::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(email.as_str(), raw.trim());
        }
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for raw in [
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a@b@example.com",
            ".ada@example.com",
            "ada.@example.com",
            "a..da@example.com",
            "ada@-example.com",
            "ada@example..com",
            "ada@example.123",
            "ad a@example.com",
            "adä@example.com",
            "Ada <ada@example.com>",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw} should be rejected");
        }
    }

    #[test]
    fn empty_and_overlong_addresses_say_why() {
        assert_eq!(Email::parse("   "), Err("is required".into()));
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(190));
        assert_eq!(long.len(), 259);
        assert_eq!(Email::parse(&long), Err("must be at most 254 bytes".into()));
    }

    #[test]
    fn a_local_part_over_64_bytes_is_rejected() {
        let email = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&email).is_err());
    }
}
