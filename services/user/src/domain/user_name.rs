//! A validated display name: text a person can see, that cannot reorder or hide what surrounds
//! it where it is shown (lists, logs, e-mails).

use service_kit::text_field;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

const MAX_CHARS: usize = 200;

/// A trimmed name of 1 to 200 characters, at least one of them visible, without control
/// characters, bidirectional embeddings, overrides or isolates, or noncharacters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    /// Trims and validates; the error describes what is wrong, for a field violation.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("is required".into());
        }
        text_field::check(name, MAX_CHARS)?;
        if name.chars().any(is_bidi_control) {
            return Err(
                "must not contain bidirectional embedding, override or isolate characters".into(),
            );
        }
        if name.chars().any(is_noncharacter) {
            return Err("must not contain Unicode noncharacters".into());
        }
        if name.chars().all(is_invisible) {
            return Err("must contain a visible character".into());
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The explicit directional formatting characters that embed, override or isolate (U+202A to
/// U+202E, U+2066 to U+2069): they make the text after a name read backwards ("Trojan Source").
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// U+FDD0 to U+FDEF and the last two code points of every plane: reserved for a program's
/// internal use, never for interchange.
fn is_noncharacter(c: char) -> bool {
    matches!(c, '\u{FDD0}'..='\u{FDEF}') || u32::from(c) & 0xFFFE == 0xFFFE
}

/// Characters that show nothing by themselves: white space and other separators, format
/// characters (zero-width space, joiners, word joiner, byte-order mark, tags), combining marks
/// and variation selectors, and the letters and symbol that render blank.
fn is_invisible(c: char) -> bool {
    const BLANK: [char; 5] = [
        '\u{115F}', // HANGUL CHOSEONG FILLER
        '\u{1160}', // HANGUL JUNGSEONG FILLER
        '\u{3164}', // HANGUL FILLER
        '\u{FFA0}', // HALFWIDTH HANGUL FILLER
        '\u{2800}', // BRAILLE PATTERN BLANK
    ];
    c.is_whitespace()
        || BLANK.contains(&c)
        || matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Mark | GeneralCategoryGroup::Separator
        )
        || matches!(
            c.general_category(),
            GeneralCategory::Format | GeneralCategory::Control
        )
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

    #[test]
    fn bidi_embeddings_overrides_and_isolates_are_rejected() {
        for c in ('\u{202A}'..='\u{202E}').chain('\u{2066}'..='\u{2069}') {
            assert!(UserName::parse(&format!("Ada{c}x")).is_err(), "{c:?}");
        }
        // Marks that only set a direction reorder nothing around the name.
        assert!(UserName::parse("Ada\u{200F}").is_ok());
    }

    #[test]
    fn noncharacters_are_rejected() {
        for c in [
            '\u{FDD0}',
            '\u{FDEF}',
            '\u{FFFE}',
            '\u{FFFF}',
            '\u{2FFFE}',
            '\u{10FFFF}',
        ] {
            assert_eq!(
                UserName::parse(&format!("Ada{c}")),
                Err("must not contain Unicode noncharacters".into()),
                "{c:?}"
            );
        }
        assert!(UserName::parse("Ada\u{FDCF}\u{FFFD}").is_ok());
    }

    #[test]
    fn names_with_nothing_visible_are_rejected() {
        for name in [
            "\u{200B}",
            "\u{2060}",
            "\u{FEFF}",
            "\u{200C}\u{200D}\u{200B}",
            "\u{0301}",
            "\u{20DD}",
            "\u{FE0F}",
            "\u{E0041}",
            "\u{3164}",
            "\u{2800}",
            "\u{200B} \u{2028} \u{0301}",
        ] {
            assert_eq!(
                UserName::parse(name),
                Err("must contain a visible character".into()),
                "{name:?}"
            );
        }
    }

    #[test]
    fn letters_of_any_script_with_marks_and_joiners_are_accepted() {
        for name in [
            "Zoe\u{0308}",
            "محمد",
            "李小龙",
            "\u{0928}\u{093F}\u{0924}\u{093F}\u{0928}",
            "\u{1F469}\u{200D}\u{1F4BB}",
            "\u{E000}",
        ] {
            assert!(UserName::parse(name).is_ok(), "{name:?}");
        }
    }
}
