//! argon2id hashing and verification of key secrets, always on the blocking pool and
//! behind a concurrency limit so a burst of cold keys cannot starve the async runtime.
use crate::config_section::config_section;
use crate::domain::import::HashCeiling;
use crate::error::{Error, Result};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

config_section! {
    /// argon2id cost parameters for new hashes (`[argon2]`). Verification always uses the
    /// parameters recorded in the stored PHC string, so these can change without re-issuing
    /// keys; the `max_*` ceiling bounds what a stored hash may ask of a verify.
    ///
    /// The defaults are light on purpose: a key's secret has ~142 random bits, so guessing
    /// it is infeasible whatever the hash cost (NIST SP 800-63B accepts even a fast hash for
    /// secrets of at least 112 bits); the hash only has to make a stolen table useless,
    /// which a memory-hard function with any cost does. A cheap verify (~1 ms) keeps cold
    /// starts fast: a fresh replica verifies 500+ first-seen keys a second on 2 cores
    /// (README, Performance). The ceiling leaves room for the usual settings of other
    /// systems (PHP's m=64 MiB,t=4; Django's m=100 MiB,t=2,p=8) while one verify stays well
    /// under a second of one core.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct Argon2Config {
        /// Memory per hash in KiB.
        pub memory_kib: u32 = 2048,
        /// Passes over memory.
        pub iterations: u32 = 1,
        /// Lanes.
        pub parallelism: u32 = 1,
        /// Hashes/verifies running at once; 0 = number of CPUs.
        pub max_concurrent: usize = 0,
        /// The most memory (KiB) a stored argon2 hash may ask one verify for: imports above
        /// it are refused, stored hashes above it never verify.
        pub max_memory_kib: u32 = 131072,
        /// The most passes (`t`) a stored argon2 hash may ask for.
        pub max_iterations: u32 = 4,
        /// The most lanes (`p`) a stored argon2 hash may ask for.
        pub max_parallelism: u32 = 16,
        /// The longest argon2 output (bytes) a stored hash may have.
        pub max_output_len: usize = 64,
    }
}

impl Argon2Config {
    /// What a stored hash may cost to verify.
    pub fn ceiling(&self) -> HashCeiling {
        HashCeiling {
            memory_kib: self.max_memory_kib,
            iterations: self.max_iterations,
            parallelism: self.max_parallelism,
            output_len: self.max_output_len,
        }
    }
}

struct Inner {
    argon: Argon2<'static>,
    permits: Semaphore,
    /// A hash of a random secret, verified against when a key id is unknown so that unknown
    /// and known ids cost the same time.
    dummy: String,
    verifies: AtomicU64,
    ceiling: HashCeiling,
}

/// Hashes and verifies secrets. Cheap to clone.
#[derive(Clone)]
pub struct SecretHasher(Arc<Inner>);

impl SecretHasher {
    pub fn new(cfg: Argon2Config) -> Result<Self> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| Error::invalid("argon2", format!("invalid argon2 parameters: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        // Keys this server hashes must verify under its own ceiling.
        for (field, value, max) in [
            ("argon2.max_memory_kib", cfg.memory_kib, cfg.max_memory_kib),
            ("argon2.max_iterations", cfg.iterations, cfg.max_iterations),
            (
                "argon2.max_parallelism",
                cfg.parallelism,
                cfg.max_parallelism,
            ),
        ] {
            if value > max {
                return Err(Error::invalid(
                    field,
                    format!("is {max}, below the {value} this server hashes new keys with"),
                ));
            }
        }
        if cfg.max_output_len < 32 {
            return Err(Error::invalid(
                "argon2.max_output_len",
                "must be at least 32 (the output of the hashes this server makes)",
            ));
        }
        let permits = if cfg.max_concurrent == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            cfg.max_concurrent
        };
        let salt = SaltString::generate(&mut OsRng);
        let dummy_secret = crate::domain::key::random_base62(36);
        let dummy = argon
            .hash_password(dummy_secret.as_bytes(), &salt)
            .map_err(|_| Error::internal("argon2 dummy hash"))?
            .to_string();
        Ok(SecretHasher(Arc::new(Inner {
            argon,
            permits: Semaphore::new(permits),
            dummy,
            verifies: AtomicU64::new(0),
            ceiling: cfg.ceiling(),
        })))
    }

    /// Runs `work` on the blocking pool once a permit is free: argon2 never runs on the
    /// async runtime's threads, and at most `max_concurrent` run at once.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.0.clone();
        let _permit = self
            .0
            .permits
            .acquire()
            .await
            .map_err(|_| Error::internal("hasher closed"))?;
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|_| Error::internal("argon2 task"))?
    }

    /// The argon2id PHC string of `secret`.
    pub async fn hash(&self, secret: SecretString) -> Result<String> {
        self.blocking(move |inner| {
            let salt = SaltString::generate(&mut OsRng);
            inner
                .argon
                .hash_password(secret.expose_secret().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| Error::internal("argon2 hash"))
        })
        .await
    }

    /// Whether `secret` matches the PHC string `phc`. With `None` (unknown key id) it
    /// verifies against a dummy hash and returns false, taking the same time.
    pub async fn verify(&self, secret: SecretString, phc: Option<String>) -> Result<bool> {
        self.blocking(move |inner| {
            inner.verifies.fetch_add(1, Ordering::Relaxed);
            let known = phc.is_some();
            let phc = phc.unwrap_or_else(|| inner.dummy.clone());
            // Imported from a system that stored SHA-256 hex (see domain::import).
            if let Some(hex) = phc.strip_prefix("sha256:") {
                use subtle::ConstantTimeEq;
                let got = crate::domain::import::sha256_hex(secret.expose_secret());
                return Ok(bool::from(got.as_bytes().ct_eq(hex.as_bytes())));
            }
            let parsed = PasswordHash::new(&phc)
                .map_err(|_| Error::internal("stored hash is not a PHC string"))?;
            // A stored hash above the ceiling is never run: whoever stored it must not
            // choose what a check costs. Its key does not authenticate.
            if let Err(why) = inner.ceiling.admits(&parsed) {
                tracing::warn!(why = %why, "refusing to verify a stored hash above the argon2 ceiling");
                return Ok(false);
            }
            let ok = inner
                .argon
                .verify_password(secret.expose_secret().as_bytes(), &parsed)
                .is_ok();
            Ok(ok && known)
        })
        .await
    }

    /// What a stored hash may cost to verify (imports are held to it too).
    pub fn ceiling(&self) -> HashCeiling {
        self.0.ceiling
    }

    /// How many verifies ran since start (a metric, and how tests prove single-flight).
    pub fn verify_count(&self) -> u64 {
        self.0.verifies.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = SecretHasher::new(Argon2Config::default()).unwrap();
        let phc = h.hash("kg_secret".to_string().into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=2048,t=1,p=1$"), "{phc}");
        assert!(!phc.contains("kg_secret"));
        assert!(h
            .verify("kg_secret".to_string().into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!h
            .verify("kg_secreT".to_string().into(), Some(phc))
            .await
            .unwrap());
        assert!(!h
            .verify("kg_secret".to_string().into(), None)
            .await
            .unwrap());
        assert_eq!(h.verify_count(), 3);
    }

    #[tokio::test]
    async fn a_stored_hash_above_the_ceiling_is_never_verified() {
        let h = SecretHasher::new(Argon2Config::default()).unwrap();
        let costly = |t: u32| {
            let params = Params::new(8, t, 1, None).unwrap();
            let salt = SaltString::generate(&mut OsRng);
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"kg_secret", &salt)
                .unwrap()
                .to_string()
        };
        // Cheap to compute here (8 KiB), but more passes than the ceiling allows.
        assert!(!h
            .verify("kg_secret".to_string().into(), Some(costly(5)))
            .await
            .unwrap());
        assert!(h
            .verify("kg_secret".to_string().into(), Some(costly(4)))
            .await
            .unwrap());
    }

    #[test]
    fn bad_params_name_the_section() {
        let e = SecretHasher::new(Argon2Config {
            memory_kib: 1,
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().starts_with("argon2:"), "{e}");
    }
}
