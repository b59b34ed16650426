//! The public keys a secret scanning partner signs with, and the check of one signature.
//!
//! The file is the JSON GitHub serves at `https://api.github.com/meta/public_keys/secret_scanning`
//! (`{"public_keys": [{"key_identifier": …, "key": "-----BEGIN PUBLIC KEY-----…", "is_current": …}]}`),
//! so an operator can fetch it as it is. Each key is ECDSA P-256; a signature is the
//! base64 of an ASN.1 DER ECDSA-SHA256 signature over the raw request body. The file is
//! re-read when it changes (GitHub rotates keys); a file that no longer parses keeps the
//! keys last read, with an error in the log.
use crate::error::{Error, Result};
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::spki::SubjectPublicKeyInfoRef;

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

#[derive(Deserialize)]
struct KeyFile {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

/// Key identifier → the P-256 public point (SEC1, uncompressed).
type Keys = HashMap<String, Vec<u8>>;

/// Why a signature was not accepted (a log and metrics label; never told to the caller
/// beyond "not signed by a known key").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Missing,
    UnknownKey,
    Malformed,
    Invalid,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Rejected::Missing => "unsigned",
            Rejected::UnknownKey => "unknown_key",
            Rejected::Malformed => "malformed_signature",
            Rejected::Invalid => "bad_signature",
        }
    }
}

/// The partner's public keys, from their file.
pub struct PartnerKeys {
    path: PathBuf,
    /// The stamp of the file as last read (or last found unreadable), and its keys.
    loaded: RwLock<(Stamp, Arc<Keys>)>,
}

fn parse_file(path: &Path) -> Result<Keys> {
    const F: &str = "leaks.public_keys_path";
    let text = std::fs::read(path)
        .map_err(|e| Error::invalid(F, format!("cannot read {}: {e}", path.display())))?;
    let file: KeyFile = serde_json::from_slice(&text).map_err(|e| {
        Error::invalid(
            F,
            format!(
                "{} is not a public-key file ({{\"public_keys\": [{{\"key_identifier\", \"key\"}}]}}): {e}",
                path.display()
            ),
        )
    })?;
    let mut keys = Keys::new();
    for (i, entry) in file.public_keys.iter().enumerate() {
        let field = format!("{F}: public_keys[{i}]");
        if entry.key_identifier.is_empty() {
            return Err(Error::invalid(field, "key_identifier is empty"));
        }
        keys.insert(
            entry.key_identifier.clone(),
            p256_point(&entry.key).map_err(|m| Error::invalid(field, m))?,
        );
    }
    if keys.is_empty() {
        return Err(Error::invalid(
            F,
            format!("{} lists no public keys", path.display()),
        ));
    }
    Ok(keys)
}

/// The public point of a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) on P-256.
fn p256_point(pem: &str) -> std::result::Result<Vec<u8>, String> {
    let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("key is not a PEM public key: {e}"))?;
    let spki = SubjectPublicKeyInfoRef::from_der(der.as_ref())
        .map_err(|e| format!("key is not a SubjectPublicKeyInfo: {e}"))?;
    let curve = spki
        .algorithm
        .parameters
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(P256) {
        return Err("key is not an ECDSA P-256 public key".into());
    }
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or("key has a malformed public point")?;
    // ring verifies with uncompressed points only: refuse others here, not at every request.
    if point.len() != 65 || point[0] != 4 {
        return Err("key's public point is not an uncompressed P-256 point".into());
    }
    Ok(point.to_vec())
}

/// What tells a changed file: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .and_then(|m| Ok((m.modified()?, m.len())))
        .ok()
}

impl PartnerKeys {
    /// Reads the file; a missing or malformed file is a configuration error.
    pub fn load(path: &Path) -> Result<PartnerKeys> {
        let stamp = stamp(path);
        let keys = parse_file(path)?;
        Ok(PartnerKeys {
            path: path.to_owned(),
            loaded: RwLock::new((stamp, Arc::new(keys))),
        })
    }

    /// The keys, re-read first if the file changed since the last read. A file that does
    /// not parse (half written, say) keeps the previous keys and is tried again on the next
    /// request, until it parses.
    fn current(&self) -> Arc<Keys> {
        let now = stamp(&self.path);
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if loaded.0 == now {
                return loaded.1.clone();
            }
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        if loaded.0 != now {
            match parse_file(&self.path) {
                Ok(keys) => {
                    tracing::info!(keys = keys.len(), "secret scanning public keys reloaded");
                    loaded.1 = Arc::new(keys);
                    loaded.0 = now;
                }
                Err(e) => {
                    tracing::error!(error = %e, "secret scanning public keys not reloaded; keeping the previous ones");
                }
            }
        }
        loaded.1.clone()
    }

    /// Whether `signature_b64` is a valid signature of `body` by the key `key_identifier`.
    pub fn verify(
        &self,
        key_identifier: Option<&str>,
        signature_b64: Option<&str>,
        body: &[u8],
    ) -> std::result::Result<(), Rejected> {
        let (Some(id), Some(sig)) = (key_identifier, signature_b64) else {
            return Err(Rejected::Missing);
        };
        let keys = self.current();
        let point = keys.get(id.trim()).ok_or(Rejected::UnknownKey)?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig.trim())
            .map_err(|_| Rejected::Malformed)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(body, &sig)
            .map_err(|_| Rejected::Invalid)
    }
}
