//! The rule for display names of tree items, written once: [`clean_name`] applies it, and
//! [`name_schema`] states it in the OpenAPI document, for folders and raw uploads alike. A
//! property test holds the two together.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::error::{AppError, AppResult};

/// A name that [`clean_name`] accepts, as a regular expression (its length is counted apart).
const NAME_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\ .\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069/\\]*$";

/// The name rule as the OpenAPI document states it.
pub fn name_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(255))
        .pattern(Some(NAME_PATTERN))
        .build()
        .into()
}

/// Display names keep only the last path segment a browser may send. (They never reach the
/// disk: stored files have server-made names.) Control characters and bidirectional-text
/// controls are refused anywhere in what was sent: they make `invoice\u{202E}fdp.exe` read as
/// `invoiceexe.pdf` in a file list.
pub fn clean_name(raw: &str) -> AppResult<String> {
    let bidi = |c: char| matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    let name = raw.rsplit(['/', '\\']).next().unwrap_or(raw).trim();
    if raw.chars().count() > 255
        || raw.chars().any(|c| c.is_control() || bidi(c))
        || name.chars().all(|c| c.is_whitespace() || c == '.')
    {
        return Err(AppError::BadRequest(
            "A name is 1 to 255 characters, with no control or bidirectional-text characters, and \
             not only spaces and dots."
                .into(),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{clean_name, name_schema};

    /// The name pattern, as the OpenAPI document states it.
    fn documented_pattern() -> regex::Regex {
        let schema = serde_json::to_value(name_schema()).unwrap();
        regex::Regex::new(schema["pattern"].as_str().unwrap()).unwrap()
    }
    /// Characters where the rule has edges: separators, dots, spaces of every kind, controls,
    /// bidirectional-text controls, and plain letters.
    fn name_char() -> impl Strategy<Value = char> {
        prop_oneof![
            prop::sample::select(vec![
                '/', '\\', '.', ' ', '\t', '\n', '\0', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}',
                '\u{1680}', '\u{2000}', '\u{200a}', '\u{200b}', '\u{200e}', '\u{202e}', '\u{2028}',
                '\u{202f}', '\u{205f}', '\u{2066}', '\u{3000}', '\u{61c}', '\u{feff}',
            ]),
            prop::char::range('a', 'e'),
            any::<char>(),
        ]
    }

    proptest! {
        #[test]
        fn the_documented_pattern_is_the_rule_the_server_applies(
            chars in prop::collection::vec(name_char(), 0..12)
        ) {
            let name: String = chars.into_iter().collect();
            let documented = documented_pattern().is_match(&name) && name.chars().count() <= 255;
            prop_assert_eq!(clean_name(&name).is_ok(), documented, "{:?}", name);
        }
    }

    #[test]
    fn a_path_keeps_its_last_part() {
        assert_eq!(clean_name("../../etc/passwd.tif").unwrap(), "passwd.tif");
        assert_eq!(clean_name("C:\\Users\\me\\scene.tif").unwrap(), "scene.tif");
        for refused in ["", " ", "..", "...", "a/ . ", "x/", "a\u{202E}b", "a\0/b"] {
            assert!(clean_name(refused).is_err(), "{refused:?}");
        }
    }
}
