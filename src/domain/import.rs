//! Keys brought from another system by their hash, keeping their format, so users migrate
//! without re-issuing keys. Such keys have no Keygate lookup id or checksum: a tenant's
//! imported key prefix tells the check path how to find them instead —
//!
//! - `sha256`: the old system stored SHA-256 hex of the whole key; the key is found by
//!   the SHA-256 of what is presented.
//! - `argon2`: the old system stored argon2 PHC strings; the first `lookup_len`
//!   characters after the prefix identify the key (its visible id part), and the PHC
//!   string verifies the rest.
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    Sha256,
    Argon2,
}

impl ImportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportFormat::Sha256 => "sha256",
            ImportFormat::Argon2 => "argon2",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sha256" => Some(ImportFormat::Sha256),
            "argon2" => Some(ImportFormat::Argon2),
            _ => None,
        }
    }
}

/// How keys under one imported prefix are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRule {
    /// The keys' printable start, e.g. `sk_live_`.
    pub key_prefix: String,
    pub tenant_id: String,
    pub format: ImportFormat,
    /// `argon2`: characters after the prefix that identify a key. 0 for `sha256`.
    pub lookup_len: usize,
}

/// Lookup ids of imported keys live in their own namespaces, apart from Keygate's
/// 12-character ids.
pub fn lookup_id(rule: &ImportRule, presented: &str) -> Option<String> {
    let rest = presented.strip_prefix(rule.key_prefix.as_str())?;
    match rule.format {
        ImportFormat::Sha256 => {
            let d = Sha256::digest(presented.as_bytes());
            Some(format!("sha256:{}", hex(&d)))
        }
        ImportFormat::Argon2 => {
            // The id part must leave a secret behind it.
            let id = rest.get(..rule.lookup_len)?;
            (rest.len() > rule.lookup_len).then(|| format!("imp:{}{id}", rule.key_prefix))
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Validates an imported prefix: 2-32 printable characters without spaces, not a prefix
/// of (or prefixed by) another tenant's imported prefix.
pub fn validate_prefix(field: &str, prefix: &str) -> Result<()> {
    let ok = (2..=32).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be 2-32 characters of letters, digits, '_', '-' or '.'",
        ))
    }
}

/// The stored hash of an imported key: a PHC string for `argon2` (any argon2 variant and
/// parameters: they travel with the hash), `sha256:<hex>` for `sha256`.
pub fn stored_hash(field: &str, format: ImportFormat, hash: &str) -> Result<String> {
    match format {
        ImportFormat::Sha256 => {
            let h = hash.trim().to_ascii_lowercase();
            if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(format!("sha256:{h}"))
            } else {
                Err(Error::invalid(field, "must be 64 hex characters (SHA-256)"))
            }
        }
        ImportFormat::Argon2 => {
            let parsed = argon2::PasswordHash::new(hash)
                .map_err(|_| Error::invalid(field, "is not a PHC string"))?;
            if !parsed.algorithm.as_str().starts_with("argon2") || parsed.hash.is_none() {
                return Err(Error::invalid(
                    field,
                    "must be an argon2 PHC string with a hash",
                ));
            }
            Ok(hash.to_owned())
        }
    }
}

/// The rule whose prefix `presented` starts with (longest first).
pub fn rule_for<'a>(rules: &'a [ImportRule], presented: &str) -> Option<&'a ImportRule> {
    rules
        .iter()
        .filter(|r| presented.starts_with(r.key_prefix.as_str()))
        .max_by_key(|r| r.key_prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_keys_are_found_by_their_rule() {
        let sha = ImportRule {
            key_prefix: "sk_live_".into(),
            tenant_id: "t".into(),
            format: ImportFormat::Sha256,
            lookup_len: 0,
        };
        let id = lookup_id(&sha, "sk_live_abc").unwrap();
        assert!(id.starts_with("sha256:") && id.len() == 7 + 64);
        assert_eq!(lookup_id(&sha, "pk_live_abc"), None);
        let argon = ImportRule {
            key_prefix: "acme-".into(),
            tenant_id: "t".into(),
            format: ImportFormat::Argon2,
            lookup_len: 6,
        };
        assert_eq!(
            lookup_id(&argon, "acme-AB12CD.secret").as_deref(),
            Some("imp:acme-AB12CD")
        );
        assert_eq!(
            lookup_id(&argon, "acme-AB12CD"),
            None,
            "no secret after the id"
        );
        assert_eq!(lookup_id(&argon, "acme-AB"), None);
        let rules = [
            sha.clone(),
            ImportRule {
                key_prefix: "sk_".into(),
                ..sha.clone()
            },
        ];
        assert_eq!(
            rule_for(&rules, "sk_live_x").unwrap().key_prefix,
            "sk_live_"
        );
    }

    #[test]
    fn hashes_are_validated() {
        assert!(stored_hash("h", ImportFormat::Sha256, &"A".repeat(64)).is_ok());
        assert!(stored_hash("h", ImportFormat::Sha256, "abc").is_err());
        assert!(stored_hash(
            "h",
            ImportFormat::Argon2,
            "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
        )
        .is_ok());
        assert!(stored_hash("h", ImportFormat::Argon2, "$2b$10$abcdefghijklmnopqrstuv").is_err());
        assert!(validate_prefix("p", "sk_live_").is_ok());
        assert!(validate_prefix("p", "has space").is_err());
    }
}
