//! Tenants and keys for the scenarios, made through the public KeyAdmin API where that is
//! fast enough.
//!
//! This is the only module that reaches into the keygate library beyond its generated gRPC
//! types (`keygate::grpc::pb`): the key format (`keygate::domain::key`), the default argon2
//! parameters (`keygate::hashing`), and, to write 100k keys in seconds, the store's
//! entities and connection (`keygate::store`, `keygate::domain::RateLimitSpec`). See the
//! section "Library internals" below.
use super::load::{check_all, check_req, connect};
use super::BoxError;
use keygate::grpc::pb::{self, key_admin_client::KeyAdminClient};
use rand::Rng;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Random letters and digits (admin tokens, Redis prefixes, names).
pub fn random_id(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// An admin token of the run's own; never printed.
pub fn admin_token() -> String {
    format!("bench-{}", random_id(32))
}

/// `limit` calls per `seconds`.
pub fn per(limit: u64, seconds: i64) -> pb::RateLimit {
    pb::RateLimit {
        name: "bench".into(),
        limit,
        window: Some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

/// A limit no run reaches (1e9 per 60 s).
pub fn unlimited() -> pb::RateLimit {
    per(1_000_000_000, 60)
}

/// A request carrying the admin bearer token.
fn authed<T>(msg: T, token: &str) -> Result<tonic::Request<T>, BoxError> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

/// A KeyAdmin client holding the admin token.
pub struct Admin {
    client: KeyAdminClient<Channel>,
    token: String,
}

impl Admin {
    pub async fn new(addr: SocketAddr, token: &str) -> Result<Admin, BoxError> {
        Ok(Admin {
            client: KeyAdminClient::new(connect(addr).await?),
            token: token.to_owned(),
        })
    }

    /// Creates (or updates) tenant `id` with the default policy.
    pub async fn tenant(&mut self, id: &str) -> Result<(), BoxError> {
        let tenant = Some(pb::Tenant {
            id: id.into(),
            display_name: id.into(),
            policy: Some(pb::TenantPolicy::default()),
            ..Default::default()
        });
        self.client
            .upsert_tenant(authed(pb::UpsertTenantRequest { tenant }, &self.token)?)
            .await?;
        Ok(())
    }

    /// A new key of `tenant` named `name` (the tenant's default limits when `limits` is
    /// empty): its id and its secret (never printed).
    pub async fn create(
        &mut self,
        tenant: &str,
        name: &str,
        limits: Vec<pb::RateLimit>,
    ) -> Result<(String, String), BoxError> {
        let req = pb::CreateKeyRequest {
            tenant_id: tenant.into(),
            name: name.into(),
            rate_limits: limits,
            ..Default::default()
        };
        let created = self
            .client
            .create_key(authed(req, &self.token)?)
            .await?
            .into_inner();
        Ok((
            created.key.ok_or("CreateKey returned no key")?.id,
            created.secret,
        ))
    }

    /// A new key of `tenant` with `limit`: its secret.
    pub async fn key(&mut self, tenant: &str, limit: pb::RateLimit) -> Result<String, BoxError> {
        Ok(self.create(tenant, "bench", vec![limit]).await?.1)
    }

    pub async fn revoke(&mut self, key_id: String) -> Result<(), BoxError> {
        let req = pb::RevokeKeyRequest {
            key_id,
            reason: "bench".into(),
        };
        self.client.revoke_key(authed(req, &self.token)?).await?;
        Ok(())
    }
}

/// Checks made on a new hot key (the first verifies it, the rest hit the cache).
pub const WARM_CHECKS: usize = 5;

/// Tenant "bench" and one key that no rate limit stops, checked `WARM_CHECKS` times
/// (filling the cache and, with Redis, the limiter's hash): the request a load repeats.
pub async fn hot_key(addr: SocketAddr, token: &str) -> Result<pb::CheckRequest, BoxError> {
    let mut admin = Admin::new(addr, token).await?;
    admin.tenant("bench").await?;
    let check = check_req(&admin.key("bench", unlimited()).await?);
    let warm = Arc::new(vec![check.clone(); WARM_CHECKS]);
    check_all(addr, warm, 1, pb::Reason::Ok)
        .await
        .map_err(|e| format!("warm-up check: {e}"))?;
    Ok(check)
}

// ---------------------------------------------------------------------------------------
// Library internals.

use keygate::domain::key;

/// Keys with a known key id and a secret never seen before: each check of one is a store
/// lookup and an argon2 verify that fails (KEY_NOT_FOUND), so nothing can be cached.
pub struct FreshSecrets {
    head: String,
    lookup: String,
}

impl FreshSecrets {
    /// The key id of `k` (a key of Keygate's own format).
    pub fn of(k: &str) -> Result<FreshSecrets, BoxError> {
        let p = key::parse(k).map_err(|e| e.describe())?;
        Ok(FreshSecrets {
            head: p.head.to_owned(),
            lookup: p.lookup_id.to_owned(),
        })
    }

    pub fn next(&self) -> String {
        key::assemble(
            &self.head,
            &self.lookup,
            &key::random_base62(key::SECRET_LEN),
        )
    }
}

/// argon2id parameters: memory in KiB, iterations, parallelism.
#[derive(Clone, Copy)]
pub struct Argon2 {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2 {
    /// The server's defaults (what `CreateKey` hashes with).
    pub fn server_default() -> Argon2 {
        let d = keygate::hashing::Argon2Config::default();
        Argon2 {
            memory_kib: d.memory_kib,
            iterations: d.iterations,
            parallelism: d.parallelism,
        }
    }

    /// The cheapest (8 KiB, 1 pass): set-up in seconds, for keys that are only ever
    /// checked from the cache.
    pub fn cheapest() -> Argon2 {
        Argon2 {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "memory_kib": self.memory_kib, "iterations": self.iterations,
            "parallelism": self.parallelism })
    }
}

impl std::fmt::Display for Argon2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Argon2 {
            memory_kib: m,
            iterations: t,
            parallelism: p,
        } = self;
        write!(f, "m={m} KiB, t={t}, p={p}")
    }
}

/// `n` new keys of `tenant` (prefix `kg_`) written straight into the SQLite file `db`,
/// 500 rows a transaction, hashed here with argon2id `params` on every core (the PHC
/// string carries the parameters, so the server verifies with them). Far faster than
/// `CreateKey` for 100k keys, and the rows are exactly what `CreateKey` writes.
pub async fn bulk_keys(
    db: &Path,
    tenant: &str,
    n: usize,
    params: Argon2,
) -> Result<Vec<String>, BoxError> {
    use keygate::store::entities::api_keys;
    use sea_orm::{ActiveValue::Set, EntityTrait, TransactionTrait};
    let limits = serde_json::to_string(&[keygate::domain::RateLimitSpec {
        name: "bench".into(),
        limit: 1_000_000_000,
        window: Duration::from_secs(60),
    }])?;
    let params = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        None,
    )
    .map_err(|e| e.to_string())?;
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut hashing = Vec::new();
    for part in 0..cpus {
        let (params, count) = (params.clone(), n / cpus + usize::from(part < n % cpus));
        hashing.push(tokio::task::spawn_blocking(move || {
            use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            (0..count)
                .map(|_| {
                    let lookup = key::random_base62(key::LOOKUP_LEN);
                    let full = key::assemble("kg_", &lookup, &key::random_base62(key::SECRET_LEN));
                    let salt = SaltString::generate(&mut OsRng);
                    let phc = argon
                        .hash_password(full.as_bytes(), &salt)
                        .map(|h| h.to_string())
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((full, lookup, phc))
                })
                .collect::<Result<Vec<_>, String>>()
        }));
    }
    let mut made = Vec::with_capacity(n);
    for h in hashing {
        made.extend(h.await??);
    }
    let url = super::server::sqlite_url(db);
    let conn = keygate::store::connect(&url, 2, Duration::from_secs(30)).await?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    for chunk in made.chunks(500) {
        let txn = conn.begin().await?;
        let rows = chunk.iter().map(|(_, lookup, phc)| api_keys::ActiveModel {
            id: Set(format!("key_{}", key::random_base62(20))),
            tenant_id: Set(tenant.to_owned()),
            name: Set("bench".into()),
            environment: Set(String::new()),
            lookup_id: Set(lookup.clone()),
            key_prefix: Set("kg_".into()),
            display_prefix: Set(lookup[..key::DISPLAY_PREFIX_LEN].to_owned()),
            secret_hash: Set(phc.clone()),
            scopes: Set("[]".into()),
            ip_allowlist: Set("[]".into()),
            rate_limits: Set(limits.clone()),
            metadata: Set("{}".into()),
            enabled: Set(true),
            create_time: Set(now),
            update_time: Set(now),
            expire_time: Set(None),
            last_used_time: Set(None),
            use_count: Set(0),
            revoke_time: Set(None),
            revoke_reason: Set(None),
            rotated_from: Set(None),
            quota: Set(None),
        });
        api_keys::Entity::insert_many(rows).exec(&txn).await?;
        txn.commit().await?;
    }
    Ok(made.into_iter().map(|(full, _, _)| full).collect())
}
