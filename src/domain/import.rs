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
        ImportFormat::Sha256 => Some(format!("sha256:{}", sha256_hex(presented))),
        ImportFormat::Argon2 => {
            // The id part must leave a secret behind it.
            let id = rest.get(..rule.lookup_len)?;
            (rest.len() > rule.lookup_len).then(|| format!("imp:{}{id}", rule.key_prefix))
        }
    }
}

/// SHA-256 of `text` as 64 lowercase hex characters: how `SHA256_HEX` imports store a
/// key, and how a leak report names a token without sending it back.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
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

/// The most one stored argon2 hash may cost to verify. A PHC string carries its own
/// parameters, so without a ceiling whoever imports keys chooses what every check of them
/// costs (`t=4294967295`, or `m=4194304`: 4 GiB per verify). Imports above it are refused;
/// a stored hash above it (imported before the ceiling, or under a higher one) is never
/// verified, so its key cannot authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCeiling {
    /// Memory per verify, KiB (`m`).
    pub memory_kib: u32,
    /// Passes (`t`).
    pub iterations: u32,
    /// Lanes (`p`).
    pub parallelism: u32,
    /// Hash output, bytes.
    pub output_len: usize,
}

impl HashCeiling {
    /// Whether `hash` (a parsed PHC string) is within the ceiling; the error names the
    /// first parameter over it, never the hash.
    pub fn admits(&self, hash: &argon2::PasswordHash<'_>) -> std::result::Result<(), String> {
        let params = argon2::Params::try_from(hash)
            .map_err(|_| "has argon2 parameters out of range".to_owned())?;
        let output = hash.hash.map_or(0, |h| h.len());
        let over = |name: &str, got: u64, max: u64| {
            format!("argon2 {name} is {got}, above the server's ceiling of {max}")
        };
        if params.m_cost() > self.memory_kib {
            return Err(over(
                "memory (m, KiB)",
                params.m_cost().into(),
                self.memory_kib.into(),
            ));
        }
        if params.t_cost() > self.iterations {
            return Err(over(
                "iterations (t)",
                params.t_cost().into(),
                self.iterations.into(),
            ));
        }
        if params.p_cost() > self.parallelism {
            return Err(over(
                "parallelism (p)",
                params.p_cost().into(),
                self.parallelism.into(),
            ));
        }
        if output > self.output_len {
            return Err(over(
                "output length (bytes)",
                output as u64,
                self.output_len as u64,
            ));
        }
        Ok(())
    }
}

/// The stored hash of an imported key: a PHC string for `argon2` (any argon2 variant, with
/// parameters within `ceiling`: they travel with the hash), `sha256:<hex>` for `sha256`.
pub fn stored_hash(
    field: &str,
    format: ImportFormat,
    hash: &str,
    ceiling: &HashCeiling,
) -> Result<String> {
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
            ceiling
                .admits(&parsed)
                .map_err(|why| Error::invalid(field, why))?;
            Ok(hash.to_owned())
        }
    }
}

/// Whether a key could start with both prefixes (one is a prefix of the other).
pub fn prefixes_overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
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

    const CEILING: HashCeiling = HashCeiling {
        memory_kib: 65536,
        iterations: 4,
        parallelism: 4,
        output_len: 64,
    };

    #[test]
    fn argon2_parameters_above_the_ceiling_are_refused_by_name() {
        let phc =
            |params: &str| format!("$argon2id$v=19${params}$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA");
        let refused = |params: &str| {
            stored_hash("keys[3].hash", ImportFormat::Argon2, &phc(params), &CEILING)
                .unwrap_err()
                .to_string()
        };
        let e = refused("m=4194304,t=1,p=1");
        assert!(
            e.starts_with("keys[3].hash: argon2 memory (m, KiB) is 4194304"),
            "{e}"
        );
        assert!(e.contains("ceiling of 65536"), "{e}");
        let e = refused("m=8,t=4294967295,p=1");
        assert!(e.contains("iterations (t) is 4294967295"), "{e}");
        let e = refused("m=64,t=1,p=8");
        assert!(e.contains("parallelism (p) is 8"), "{e}");
        // 48 bytes of output against a ceiling of 32.
        let long = format!(
            "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHQ${}",
            "QUFB".repeat(16)
        );
        let short = HashCeiling {
            output_len: 32,
            ..CEILING
        };
        let e = stored_hash("h", ImportFormat::Argon2, &long, &short)
            .unwrap_err()
            .to_string();
        assert!(e.contains("output length (bytes) is 48"), "{e}");
        // At the ceiling exactly: accepted.
        assert!(stored_hash("h", ImportFormat::Argon2, &phc("m=65536,t=4,p=4"), &CEILING).is_ok());
    }

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
        assert!(stored_hash("h", ImportFormat::Sha256, &"A".repeat(64), &CEILING).is_ok());
        assert!(stored_hash("h", ImportFormat::Sha256, "abc", &CEILING).is_err());
        assert!(stored_hash(
            "h",
            ImportFormat::Argon2,
            "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            &CEILING
        )
        .is_ok());
        assert!(stored_hash(
            "h",
            ImportFormat::Argon2,
            "$2b$10$abcdefghijklmnopqrstuv",
            &CEILING
        )
        .is_err());
        assert!(validate_prefix("p", "sk_live_").is_ok());
        assert!(prefixes_overlap("tt_", "tt_"));
        assert!(prefixes_overlap("tt_", "tt_live_"));
        assert!(prefixes_overlap("tt_live_", "tt_"));
        assert!(!prefixes_overlap("tt_", "tu_"));
        assert!(validate_prefix("p", "has space").is_err());
    }
}
