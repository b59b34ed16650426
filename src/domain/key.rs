//! The API-key format: `<key_prefix><environment>_<body>`, e.g. `nxc_live_<body>`.
//!
//! The body is 42 base62 characters: a 12-character lookup id (random, not secret: it
//! finds the stored row), a 24-character secret (~142 bits from the OS CSPRNG), and a
//! 6-character checksum: the CRC32 of everything before it, in base62. The checksum lets
//! Keygate reject a typo or a random string without a database lookup, and lets secret
//! scanners recognise a Keygate key with a regex plus a checksum test (as GitHub's tokens).
use crate::error::{Error, Result};
use rand::{rngs::OsRng, Rng};

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
pub const LOOKUP_LEN: usize = 12;
pub const SECRET_LEN: usize = 24;
pub const CHECKSUM_LEN: usize = 6;
pub const BODY_LEN: usize = LOOKUP_LEN + SECRET_LEN + CHECKSUM_LEN;
/// Longest printable prefix: a 16-char key prefix plus a 16-char environment and `_`.
pub const MAX_HEAD_LEN: usize = 33;
/// How many leading characters of the body a key list shows (NexusCommerce's "Prefix").
pub const DISPLAY_PREFIX_LEN: usize = 8;

/// Random base62 text from the operating system's CSPRNG (uniform: `gen_range` rejects
/// rather than taking a biased modulo).
pub fn random_base62(len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn checksum(text: &str) -> String {
    let mut n = crc32fast::hash(text.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    // 62^6 > 2^32, so every CRC32 fits.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// What a freshly generated key consists of.
pub struct ApiKeyFormat {
    /// The full key, to be shown once.
    pub full: secrecy::SecretString,
    /// `nxc_live_`: the printable, non-secret start.
    pub head: String,
    pub lookup_id: String,
    pub display_prefix: String,
}

impl ApiKeyFormat {
    /// Generates a new key that starts with `head` (the tenant's prefix and environment).
    pub fn generate(head: &str) -> Self {
        let lookup_id = random_base62(LOOKUP_LEN);
        let full = assemble(head, &lookup_id, &random_base62(SECRET_LEN));
        ApiKeyFormat {
            full: full.into(),
            head: head.to_owned(),
            display_prefix: lookup_id[..DISPLAY_PREFIX_LEN].to_owned(),
            lookup_id,
        }
    }
}

/// A key from its parts, with its checksum. (Tests use it to forge well-formed keys.)
pub fn assemble(head: &str, lookup_id: &str, secret: &str) -> String {
    let unsummed = format!("{head}{lookup_id}{secret}");
    let sum = checksum(&unsummed);
    unsummed + &sum
}

/// The printable start of a key: `<key_prefix><environment>_`, or `<key_prefix>` when the
/// tenant has no environments.
pub fn key_head(key_prefix: &str, environment: &str) -> String {
    if environment.is_empty() {
        key_prefix.to_owned()
    } else {
        format!("{key_prefix}{environment}_")
    }
}

/// A presented key whose shape and checksum hold. Borrowed from the presented text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub head: &'a str,
    pub lookup_id: &'a str,
}

/// Why a presented string is not a Keygate key; no variant carries the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedKey {
    NoPrefix,
    BadPrefix,
    BadLength,
    BadAlphabet,
    BadChecksum,
}

impl MalformedKey {
    pub fn describe(self) -> &'static str {
        match self {
            MalformedKey::NoPrefix => "the key has no prefix",
            MalformedKey::BadPrefix => "the key prefix is not well-formed",
            MalformedKey::BadLength => "the key has the wrong length",
            MalformedKey::BadAlphabet => "the key contains characters a key never has",
            MalformedKey::BadChecksum => "the key's checksum does not match (a typo?)",
        }
    }
}

/// Checks a presented key's shape and checksum without any lookup.
pub fn parse(presented: &str) -> std::result::Result<ParsedKey<'_>, MalformedKey> {
    let split = presented.rfind('_').ok_or(MalformedKey::NoPrefix)?;
    let (head, body) = presented.split_at(split + 1);
    if head.len() > MAX_HEAD_LEN
        || !head.as_bytes()[0].is_ascii_lowercase()
        || !head
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(MalformedKey::BadPrefix);
    }
    if body.len() != BODY_LEN {
        return Err(MalformedKey::BadLength);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(MalformedKey::BadAlphabet);
    }
    let (unsummed, sum) = presented.split_at(presented.len() - CHECKSUM_LEN);
    if checksum(unsummed) != sum {
        return Err(MalformedKey::BadChecksum);
    }
    Ok(ParsedKey {
        head,
        lookup_id: &body[..LOOKUP_LEN],
    })
}

/// Validates a tenant's key prefix: lowercase letter, then lowercase letters or digits,
/// ending in `_`, at most 16 characters (`nes_`, `nxc_`, `fc_`, `niq_`).
pub fn validate_key_prefix(field: &str, prefix: &str) -> Result<()> {
    let ok = prefix.len() >= 2
        && prefix.len() <= 16
        && prefix.ends_with('_')
        && prefix.as_bytes()[0].is_ascii_lowercase()
        && prefix[..prefix.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            "must be 2-16 characters: a lowercase letter, then lowercase letters or digits, ending in '_' (e.g. \"nxc_\")",
        ))
    }
}

/// Validates an environment name: 1-16 lowercase letters or digits, starting with a letter.
pub fn validate_environment(field: &str, env: &str) -> Result<()> {
    let ok = !env.is_empty()
        && env.len() <= 16
        && env.as_bytes()[0].is_ascii_lowercase()
        && env
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{env:?} must be 1-16 lowercase letters or digits, starting with a letter"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn generated_keys_parse_and_carry_their_parts() {
        for head in ["kg_", "nxc_live_", "nes_", "a1_test2_"] {
            let k = ApiKeyFormat::generate(head);
            let full = k.full.expose_secret();
            assert!(full.starts_with(head));
            assert_eq!(full.len(), head.len() + BODY_LEN);
            let p = parse(full).expect("generated key parses");
            assert_eq!(p.head, head);
            assert_eq!(p.lookup_id, k.lookup_id);
            assert_eq!(k.display_prefix, &k.lookup_id[..8]);
        }
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let k = ApiKeyFormat::generate("nxc_live_");
        let full = k.full.expose_secret().to_owned();
        let head_len = "nxc_live_".len();
        for i in head_len..full.len() {
            let mut bytes = full.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(bytes).unwrap();
            assert_eq!(parse(&typo), Err(MalformedKey::BadChecksum), "position {i}");
        }
    }

    #[test]
    fn malformed_shapes_are_named() {
        assert_eq!(parse("nokeyatall"), Err(MalformedKey::NoPrefix));
        assert_eq!(parse("NXC_abc"), Err(MalformedKey::BadPrefix));
        assert_eq!(parse("nxc_short"), Err(MalformedKey::BadLength));
        let body = "!".repeat(BODY_LEN);
        assert_eq!(
            parse(&format!("nxc_{body}")),
            Err(MalformedKey::BadAlphabet)
        );
        assert_eq!(
            parse(&format!("_{}", "a".repeat(BODY_LEN))),
            Err(MalformedKey::BadPrefix)
        );
    }

    #[test]
    fn random_base62_covers_the_alphabet_uniformly_enough() {
        let s = random_base62(62 * 200);
        for c in ALPHABET {
            let n = s.bytes().filter(|b| b == c).count();
            assert!(
                (100..=320).contains(&n),
                "char {} appeared {n} times",
                *c as char
            );
        }
    }

    #[test]
    fn prefixes_and_environments_are_validated() {
        for ok in ["nes_", "nxc_", "fc_", "niq_", "kg_", "a1_"] {
            validate_key_prefix("p", ok).unwrap();
        }
        for bad in ["", "_", "nes", "Nes_", "1a_", "n-s_", "abcdefghijklmnop_"] {
            assert!(validate_key_prefix("p", bad).is_err(), "{bad:?}");
        }
        validate_environment("e", "live").unwrap();
        assert!(validate_environment("e", "Live").is_err());
        assert!(validate_environment("e", "li_ve").is_err());
    }
}
