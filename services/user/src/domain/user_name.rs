//! A validated display name.

const MAX_CHARS: usize = 200;

/// A trimmed name of 1 to 200 characters, without control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    /// Trims and validates; the error describes what is wrong, for a field violation.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("is required".into());
        }
        if name.chars().count() > MAX_CHARS {
            return Err(format!("must be at most {MAX_CHARS} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed() {
        assert_eq!(UserName::parse("  Ada  ").map(|n| n.0), Ok("Ada".into()));
    }

    #[test]
    fn the_limit_counts_characters_not_bytes() {
        assert!(UserName::parse(&"é".repeat(200)).is_ok());
        assert_eq!(
            UserName::parse(&"é".repeat(201)),
            Err("must be at most 200 characters".into())
        );
    }

    #[test]
    fn blank_and_control_characters_are_rejected() {
        assert_eq!(UserName::parse(" \t "), Err("is required".into()));
        assert!(UserName::parse("Ada\u{0}Lovelace").is_err());
    }
}
