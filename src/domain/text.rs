//! Validation of the free-text and identifier fields every entity shares.
use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// Longest key or tenant name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;

/// A display name: 1-100 characters, no control characters, not only white space.
pub fn validate_name(field: &str, name: &str) -> Result<()> {
    let chars = name.chars().count();
    if chars == 0 || name.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        return Err(Error::invalid(
            field,
            "must not be empty or only invisible characters",
        ));
    }
    if chars > MAX_NAME_CHARS {
        return Err(Error::invalid(
            field,
            format!("is {chars} characters; at most {MAX_NAME_CHARS} are allowed"),
        ));
    }
    reject_control(field, name)
}

/// Free text (a display name that may be empty, a revoke reason) of at most `max` chars.
pub fn validate_text(field: &str, text: &str, max: usize) -> Result<()> {
    let chars = text.chars().count();
    if chars > max {
        return Err(Error::invalid(
            field,
            format!("is {chars} characters; at most {max} are allowed"),
        ));
    }
    reject_control(field, text)
}

/// Zero-width and formatting characters that show nothing by themselves.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

/// Bidirectional overrides and isolates: they make a name display as something else
/// (`U+202E` shows `evil<U+202E>txt.exe` as `evilexe.txt`), so names that show in consoles refuse them.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

fn reject_control(field: &str, text: &str) -> Result<()> {
    if text.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    if text.chars().any(is_bidi_control) {
        return Err(Error::invalid(
            field,
            "must not contain bidirectional override characters",
        ));
    }
    Ok(())
}

/// A tenant id: 1-64 chars of `[A-Za-z0-9._-]` (UUIDs and slugs fit).
pub fn validate_tenant_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if id.len() > 64 {
        return Err(Error::invalid(field, "is longer than 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::invalid(
            field,
            "may contain only letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Key metadata: at most 32 entries; keys 1-64 chars, values at most 512, no control chars.
pub fn validate_metadata(field: &str, metadata: &BTreeMap<String, String>) -> Result<()> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
            field,
            format!(
                "has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
                metadata.len()
            ),
        ));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(Error::invalid(
                field,
                format!("key {k:?} must be 1-{MAX_METADATA_KEY_CHARS} characters"),
            ));
        }
        reject_control(field, k)?;
        validate_text(&format!("{field}[{k}]"), v, MAX_METADATA_VALUE_CHARS)?;
    }
    // Forwarded upstream as headers, two keys must not share a header.
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for k in metadata.keys() {
        if let Some(other) = seen.insert(metadata_header(k), k) {
            return Err(Error::invalid(
                field,
                format!(
                    "keys {other:?} and {k:?} would both be forwarded as header {:?}",
                    metadata_header(k)
                ),
            ));
        }
    }
    Ok(())
}

/// The header a metadata entry is forwarded upstream as (Envoy, `forward_metadata`):
/// lower case, anything but letters, digits and `-` turned into `-`.
pub fn metadata_header(key: &str) -> String {
    let safe = key
        .to_ascii_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    format!("x-keygate-meta-{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_what_would_display_as_something_else() {
        assert!(validate_name("name", "prod key").is_ok());
        assert!(validate_name("name", "Ключ 東京").is_ok());
        let e = validate_name("name", "evil\u{202E}txt.exe").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("name: must not contain bidirectional"),
            "{e}"
        );
        let e = validate_name("name", "\u{200B}\u{200B} ").unwrap_err();
        assert!(e.to_string().contains("invisible"), "{e}");
        assert!(validate_text("reason", "a\u{2067}b", 50).is_err());
    }

    #[test]
    fn metadata_keys_that_share_a_forwarded_header_are_refused() {
        let md = |keys: &[&str]| {
            keys.iter()
                .map(|k| (k.to_string(), "v".to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(validate_metadata("metadata", &md(&["plan", "team-id"])).is_ok());
        let e = validate_metadata("metadata", &md(&["A B", "a-b"])).unwrap_err();
        assert!(e.to_string().contains("x-keygate-meta-a-b"), "{e}");
        assert_eq!(metadata_header("Team_ID"), "x-keygate-meta-team-id");
    }
}
