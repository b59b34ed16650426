//! Verified keys and tenants held in memory so a hot key's check touches neither the
//! database nor argon2.
//!
//! Keys are cached under the SHA-256 of the full presented key (never the key itself).
//! Loads are single-flight: concurrent misses for one key share one store lookup and one
//! argon2 verify. Invalidation has to beat a race: a load that read the row *before* an
//! admin change may insert its entry *after* the change was announced. So every entry
//! records the change epoch at which its load began, every change leaves a tombstone with
//! a newer epoch, and a hit on an entry older than its tombstone is a miss.
use crate::config::CacheConfig;
use crate::domain::change::ChangeListener;
use crate::domain::record::KeyParts;
use crate::domain::{CachedKey, IpAllowlist, KeyRecord, RateLimitSpec, ScopeSet, Tenant};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SHA-256 of a presented key: the cache's key.
pub type KeyDigest = [u8; 32];

pub fn digest(presented: &str) -> KeyDigest {
    Sha256::digest(presented.as_bytes()).into()
}

/// A cached value and the change epoch its load started at.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: T,
    pub epoch: u64,
}

impl<T> std::ops::Deref for Loaded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Why a key did not resolve; cached briefly so a flood of one bad key stays off the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unknown;

/// The caches of verified keys, unknown keys and tenants.
pub struct KeyCache {
    epoch: AtomicU64,
    /// Entries loaded before this epoch are stale (set by `invalidate_all`).
    all_before: AtomicU64,
    keys: moka::future::Cache<KeyDigest, Arc<Loaded<CachedKey>>, Hasher>,
    /// What cached keys share (see [`CachedKey`]).
    shared: Shared,
    unknown: moka::future::Cache<KeyDigest, (), Hasher>,
    tenants: moka::future::Cache<String, Arc<Loaded<Tenant>>, Hasher>,
    key_tombstones: moka::sync::Cache<String, u64, Hasher>,
    tenant_tombstones: moka::sync::Cache<String, u64, Hasher>,
}

/// The caches' hasher: their keys are SHA-256 digests and ids no client chooses, so a fast
/// hash does; SipHash showed in the check profile.
type Hasher = foldhash::fast::RandomState;

/// What a key load produced: the key, or "no such key / wrong secret".
pub enum Resolved {
    Key(Arc<Loaded<CachedKey>>),
    Unknown,
}

impl KeyCache {
    pub fn new(cfg: &CacheConfig) -> Self {
        let ttl = Duration::from_secs(cfg.ttl_secs);
        // A tombstone must outlive every entry loaded before it.
        let tomb_ttl = ttl + Duration::from_secs(5);
        KeyCache {
            epoch: AtomicU64::new(1),
            all_before: AtomicU64::new(0),
            keys: moka::future::Cache::builder()
                .max_capacity(cfg.max_entries)
                .time_to_live(ttl)
                .build_with_hasher(Hasher::default()),
            shared: Shared::default(),
            unknown: moka::future::Cache::builder()
                .max_capacity(cfg.negative_max_entries)
                .time_to_live(Duration::from_secs(cfg.negative_ttl_secs.max(1)))
                .build_with_hasher(Hasher::default()),
            tenants: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build_with_hasher(Hasher::default()),
            key_tombstones: moka::sync::Cache::builder()
                .max_capacity(cfg.max_entries)
                .time_to_live(tomb_ttl)
                .build_with_hasher(Hasher::default()),
            tenant_tombstones: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(tomb_ttl)
                .build_with_hasher(Hasher::default()),
        }
    }

    fn current_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The key for `digest`, loading it with the future `load` makes on a miss
    /// (single-flight). The load returns `Ok(None)` for an unknown key or a wrong secret.
    ///
    /// `load` is a closure, and the miss path is boxed, so that a hit neither builds nor
    /// carries the load's (large) future: every check's future stays small, and moving it
    /// (tonic boxes each call's future) copies little. Profiled: the hot path spent ~12k
    /// of its ~89k instructions per check in `memcpy` of futures before this.
    pub async fn key<L, F>(&self, digest: KeyDigest, lookup_id: &str, load: L) -> Result<Resolved>
    where
        L: FnOnce() -> F,
        F: Future<Output = Result<Option<KeyRecord>>>,
    {
        if let Some(hit) = self.keys.get(&digest).await {
            if self
                .key_tombstones
                .get(lookup_id)
                .is_none_or(|t| hit.epoch >= t)
            {
                return Ok(Resolved::Key(hit));
            }
            self.keys.invalidate(&digest).await;
        }
        if self.unknown.contains_key(&digest) {
            return Ok(Resolved::Unknown);
        }
        let epoch = self.current_epoch();
        let interned = &self.shared;
        let loaded = Box::pin(self.keys.try_get_with(digest, async move {
            match load().await? {
                Some(record) => Ok(Arc::new(Loaded {
                    value: CachedKey::new(record, interned),
                    epoch,
                })),
                None => Err(Error::not_found("key", "")),
            }
        }))
        .await;
        match loaded {
            Ok(k) => Ok(Resolved::Key(k)),
            Err(e) => match &*e {
                Error::NotFound { .. } => {
                    self.unknown.insert(digest, ()).await;
                    Ok(Resolved::Unknown)
                }
                _ => Err(shared(e)),
            },
        }
    }

    /// Whether a verified key with this digest is cached (no load, no side effects).
    pub fn holds_key(&self, digest: &KeyDigest) -> bool {
        self.keys.contains_key(digest)
    }

    /// The tenant `id`, loading it with the future `load` makes on a miss (single-flight;
    /// the miss path boxed, as for [`key`](Self::key)).
    pub async fn tenant<L, F>(&self, id: &str, load: L) -> Result<Arc<Loaded<Tenant>>>
    where
        L: FnOnce() -> F,
        F: Future<Output = Result<Tenant>>,
    {
        if let Some(hit) = self.tenants.get(id).await {
            if self
                .tenant_tombstones
                .get(id)
                .is_none_or(|t| hit.epoch >= t)
            {
                return Ok(hit);
            }
            self.tenants.invalidate(id).await;
        }
        let epoch = self.current_epoch();
        Box::pin(self.tenants.try_get_with_by_ref(id, async move {
            Ok::<_, Error>(Arc::new(Loaded {
                value: load().await?,
                epoch,
            }))
        }))
        .await
        .map_err(shared)
    }

    fn bump(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Treats every entry loaded so far as stale (after missed change notifications).
    pub fn invalidate_all(&self) {
        let e = self.bump();
        self.all_before.store(e, Ordering::SeqCst);
        self.keys.invalidate_all();
        self.tenants.invalidate_all();
        self.unknown.invalidate_all();
    }

    /// Entries currently held, after moka's pending bookkeeping has run (for metrics).
    pub async fn entries(&self) -> u64 {
        self.keys.run_pending_tasks().await;
        self.keys.entry_count()
    }

    /// Entries currently held (approximate: moka counts lazily).
    pub fn len(&self) -> u64 {
        self.keys.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One copy of each value many cached keys hold alike. An entry lives while a cached key
/// holds it: when the set has doubled since it was last swept, entries no key holds any
/// more are dropped, so it stays within twice what is in use (loads are misses: rare).
struct Interner<T: ?Sized> {
    set: Mutex<(HashSet<Arc<T>, Hasher>, usize)>,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            set: Mutex::new((HashSet::default(), 0)),
        }
    }
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    fn intern<V: std::borrow::Borrow<T> + Into<Arc<T>>>(&self, value: V) -> Arc<T> {
        let mut guard = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let (set, swept) = &mut *guard;
        if let Some(held) = set.get(value.borrow()) {
            return held.clone();
        }
        if set.len() >= (*swept * 2).max(64) {
            set.retain(|v| Arc::strong_count(v) > 1);
            *swept = set.len();
        }
        let held: Arc<T> = value.into();
        set.insert(held.clone());
        held
    }
}

/// The interners of [`CachedKey`]'s shared parts.
#[derive(Default)]
struct Shared {
    text: Interner<str>,
    scopes: Interner<ScopeSet>,
    limits: Interner<[RateLimitSpec]>,
    allowlists: Interner<IpAllowlist>,
}

impl KeyParts for Shared {
    fn text(&self, s: &str) -> Arc<str> {
        self.text.intern(s)
    }
    fn scopes(&self, s: ScopeSet) -> Arc<ScopeSet> {
        self.scopes.intern(s)
    }
    fn allowlist(&self, a: IpAllowlist) -> Arc<IpAllowlist> {
        self.allowlists.intern(a)
    }
    fn limits(&self, l: Vec<RateLimitSpec>) -> Arc<[RateLimitSpec]> {
        self.limits.intern(l)
    }
}

/// moka hands a failed load's error to every waiter behind an `Arc`; rebuild an owned
/// error of the same kind (the original cause is logged where it happened).
fn shared(e: Arc<Error>) -> Error {
    match &*e {
        Error::Unavailable { what, .. } => Error::Unavailable {
            what,
            source: Box::new(ArcError(e.clone())),
        },
        _ => Error::Internal {
            context: "loading a key",
            source: Some(Box::new(ArcError(e.clone()))),
        },
    }
}

#[derive(Debug)]
struct ArcError(Arc<Error>);

impl std::fmt::Display for ArcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

impl ChangeListener for KeyCache {
    fn key_changed(&self, _key_id: &str, lookup_id: &str) {
        let e = self.bump();
        self.key_tombstones.insert(lookup_id.to_owned(), e);
    }

    fn tenant_changed(&self, tenant_id: &str) {
        let e = self.bump();
        self.tenant_tombstones.insert(tenant_id.to_owned(), e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_parts_are_held_once_and_unheld_ones_are_let_go() {
        let text: Interner<str> = Interner::default();
        let a = text.intern("tenant-a");
        let b = text.intern(String::from("tenant-a").as_str());
        assert!(Arc::ptr_eq(&a, &b), "one copy for equal values");
        // Values no key holds any more are dropped once the set has doubled.
        for i in 0..1_000 {
            drop(text.intern(format!("gone-{i}").as_str()));
        }
        let held = text.set.lock().unwrap().0.len();
        assert!(held < 200, "{held} entries kept for 2 values in use");
        assert!(
            Arc::ptr_eq(&a, &text.intern("tenant-a")),
            "a held value stays"
        );
    }
}
