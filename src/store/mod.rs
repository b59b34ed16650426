//! Persistence, as narrow seams: one trait per kind of data (tenants and plans, keys,
//! imports, audit, usage, quotas, admin tokens, health, and the change feed between
//! replicas), so each consumer holds only the one it uses. [`SeaStore`] implements every
//! one of them on SQLite and PostgreSQL through sea-orm; the behaviour suites in `tests/`
//! run each trait on both.
pub mod changes;
mod db;
pub mod entities;
mod sea;

pub use db::{connect, migrate, pending_migrations, Backend};
pub use sea::SeaStore;

use crate::domain::event::Event;
use crate::domain::import::ImportRule;
use crate::domain::quota::{QuotaChange, QuotaCounter};
use crate::domain::reservation::{Reservation, ReservationTotals, Settlement};
use crate::domain::webhook::{Delivery, DeliveryState, Endpoint};
use crate::domain::{AuditEvent, KeyRecord, NewKey, Plan, Tenant, UnixMillis};
use crate::error::Result;
use std::collections::HashMap;
use std::sync::Arc;

/// Which keys `list_keys` returns, one page at a time.
#[derive(Debug, Clone)]
pub struct KeyQuery {
    pub tenant_id: String,
    /// Resume after this (create_time, id), exclusive.
    pub after: Option<(UnixMillis, String)>,
    pub limit: u64,
    pub include_revoked: bool,
    pub include_expired: bool,
    pub now: UnixMillis,
}

/// A stored admin token: its identity and the SHA-256 digest of the token (never the token).
#[derive(Debug, Clone)]
pub struct AdminTokenRecord {
    pub id: String,
    pub digest: [u8; 32],
    pub description: String,
    pub role: crate::domain::access::Role,
    /// `None`: every tenant.
    pub tenant_id: Option<String>,
    pub create_time: UnixMillis,
    pub revoke_time: Option<UnixMillis>,
}

/// Which audit events `list_audit_events` returns, newest first, one page at a time.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub tenant_id: Option<String>,
    pub key_id: Option<String>,
    /// Resume before this (time, id), exclusive.
    pub before: Option<(UnixMillis, String)>,
    pub start: Option<UnixMillis>,
    pub end: Option<UnixMillis>,
    pub limit: u64,
}

/// One key's uses in a usage flush.
#[derive(Debug, Clone)]
pub struct KeyUse {
    pub key_id: String,
    /// Moves `last_used_time` forward (never backward).
    pub last_used: UnixMillis,
    /// Added to the all-time use count.
    pub uses: u64,
}

/// Counts of one (key, bucket, endpoint, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCell {
    pub key_id: String,
    pub tenant_id: String,
    /// Start of the UTC minute or day.
    pub bucket: UnixMillis,
    pub endpoint: String,
    /// The reason's code (`OK`, `RATE_LIMITED`, …).
    pub reason: &'static str,
    pub count: u64,
    /// Budget spent (allowed calls only).
    pub cost: u64,
}

/// One flush of the usage recorder: written in one transaction, added to what is stored.
#[derive(Debug, Clone, Default)]
pub struct UsageBatch {
    pub keys: Vec<KeyUse>,
    /// At most one cell per (key, minute, endpoint, reason).
    pub minutes: Vec<UsageCell>,
    /// At most one cell per (key, day, endpoint, reason).
    pub days: Vec<UsageCell>,
}

/// Minute or day buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketSize {
    Minute,
    Day,
}

/// Whose usage, from which table, over which buckets `[start, end)`.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub tenant_id: String,
    /// Unset: every key of the tenant.
    pub key_id: Option<String>,
    pub size: BucketSize,
    pub start: UnixMillis,
    pub end: UnixMillis,
}

/// Stored counts, summed over keys (for a tenant query) per bucket, endpoint and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub bucket: UnixMillis,
    pub endpoint: String,
    pub reason: String,
    pub count: u64,
    pub cost: u64,
}

/// A request for units of one quota period, made when a replica's lease runs dry.
#[derive(Debug, Clone)]
pub struct QuotaClaim {
    /// `key:<id>` or `tenant:<id>`.
    pub subject: String,
    pub period_start: UnixMillis,
    /// The quota's limit for the period (top-ups come on top).
    pub limit: u64,
    /// Units the call at hand needs: less than this remaining, nothing is claimed.
    pub need: u64,
    /// Units the replica would like to hold; it gets at most an eighth of what remains
    /// (but at least `need`), so replicas share the last units of a period.
    pub want: u64,
    pub now: UnixMillis,
}

/// What a quota claim got, and the period's counter after it (zeros when it got nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimedUnits {
    pub units: u64,
    /// Units handed out in the period (spent, or leased to replicas), this claim included.
    pub used: u64,
    /// Top-ups on top of the limit (may be negative).
    pub granted: i64,
}

/// Tenants and the plan templates their policies may name.
///
/// Every write that changes a tenant, a plan or a key (here and in the traits below) takes
/// the `audit` event describing it and inserts it in the same transaction as the change; a
/// write that fails, or changes nothing, leaves no event.
#[async_trait::async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// Inserts or replaces a tenant; `create_time` of an existing tenant is kept.
    async fn upsert_tenant(&self, tenant: Tenant, audit: AuditEvent) -> Result<Tenant>;
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>>;
    /// Tenants ordered by id, after `after` (exclusive).
    async fn list_tenants(&self, after: Option<&str>, limit: u64) -> Result<Vec<Tenant>>;
    /// Inserts or replaces a plan (its `create_time` kept), with its audit event.
    async fn upsert_plan(&self, plan: Plan, audit: AuditEvent) -> Result<Plan>;
    async fn get_plan(&self, id: &str) -> Result<Option<Plan>>;
    /// Every plan, ordered by id.
    async fn list_plans(&self) -> Result<Vec<Plan>>;
}

/// Keys issued by Keygate: the hot path's lookup and the lifecycle writes.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Inserts a key unless its tenant already has `cap` active (neither revoked nor expired
    /// at `now`) keys; 0 = no cap. The count and the insert are one transaction, serialised
    /// per tenant, so concurrent creates never exceed the cap.
    async fn insert_key(
        &self,
        key: NewKey,
        cap: u32,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<KeyRecord>;
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>>;
    /// The key with this lookup id and its argon2 PHC hash: the hot path's one query.
    async fn find_by_lookup_id(&self, lookup_id: &str) -> Result<Option<(KeyRecord, String)>>;
    async fn list_keys(&self, query: &KeyQuery) -> Result<Vec<KeyRecord>>;
    /// Keys of every tenant not revoked at `from` whose expiry is in `(from, to]`,
    /// ordered by (expire_time, id), after `after` (exclusive): the expiry sweep's pages.
    async fn keys_expiring(
        &self,
        from: UnixMillis,
        to: UnixMillis,
        after: Option<(UnixMillis, String)>,
        limit: u64,
    ) -> Result<Vec<KeyRecord>>;
    /// Writes the settable fields (name, scopes, ip_allowlist, rate_limits, metadata,
    /// enabled, update_time) of an existing key. Never touches revocation.
    async fn update_key_settings(&self, key: &KeyRecord, audit: AuditEvent) -> Result<()>;
    /// Sets the revocation time unless the key is already revoked at or before `at`
    /// (then nothing changes and nothing is audited). Returns the key as stored afterwards.
    /// Disables the key if it is enabled, touching nothing else (a concurrent update of
    /// other fields is not overwritten), with its audit event when it changed; whether it
    /// did.
    async fn disable_key(&self, id: &str, now: UnixMillis, audit: AuditEvent) -> Result<bool>;
    async fn revoke_key(
        &self,
        id: &str,
        at: UnixMillis,
        reason: &str,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<KeyRecord>;
    /// Schedules `old_id`'s revocation at `revoke_at` and inserts `new` in one transaction.
    async fn rotate_key(
        &self,
        old_id: &str,
        revoke_at: UnixMillis,
        new: NewKey,
        audit: AuditEvent,
    ) -> Result<(KeyRecord, KeyRecord)>;
}

/// Keys brought from another system by their stored hash, and the prefixes they use.
#[async_trait::async_trait]
pub trait ImportStore: Send + Sync + 'static {
    /// Inserts imported keys under `rule` in one transaction, within the tenant's `cap`
    /// of active keys (0 = none), each with its audit event. The rule is recorded on first
    /// use; a prefix already imported with another tenant, format or lookup length is
    /// refused, as is a key whose lookup id exists.
    async fn import_keys(
        &self,
        rule: &ImportRule,
        keys: Vec<(NewKey, AuditEvent)>,
        cap: u32,
        now: UnixMillis,
    ) -> Result<Vec<KeyRecord>>;
    /// Every imported key prefix's rule.
    async fn import_rules(&self) -> Result<Vec<ImportRule>>;
}

/// The audit trail, read back (writes append to it in their own transactions).
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// The audit trail, newest first.
    async fn list_audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>>;
    /// Appends an event that changes nothing else: a report acted on by recording it
    /// (a leaked key under `on_leak = notify`, or one already revoked).
    async fn record_audit_event(&self, event: &AuditEvent) -> Result<()>;
}

/// Usage counts per key, minute and day.
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Adds a usage flush: cells to the minute and day tables, uses to each key's count,
    /// `last_used_time` forward. One transaction: all of it or none.
    async fn record_usage(&self, batch: &UsageBatch) -> Result<()>;
    /// Stored counts matching `query`, one row per bucket, endpoint and reason.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>>;
    /// Each of `key_ids`' total count in the day bucket `day` (keys without uses absent).
    async fn uses_in_day(
        &self,
        key_ids: &[String],
        day: UnixMillis,
    ) -> Result<HashMap<String, u64>>;
    /// Deletes minute buckets before `minutes_before` and day buckets before
    /// `days_before`; returns the rows deleted.
    async fn prune_usage(&self, minutes_before: UnixMillis, days_before: UnixMillis)
        -> Result<u64>;
}

/// Quota period counters, shared by every replica.
#[async_trait::async_trait]
pub trait QuotaStore: Send + Sync + 'static {
    /// Hands out units of a quota period in one atomic step: `0` when fewer than
    /// `claim.need` remain, else the units now counted as used (see [`QuotaClaim`]). The
    /// counter row is created on first use. Across replicas the counter never passes the
    /// limit plus top-ups.
    async fn claim_quota(&self, claim: &QuotaClaim) -> Result<u64> {
        Ok(self.claim_quota_counted(claim).await?.units)
    }
    /// [`QuotaStore::claim_quota`], with the counter as the claim left it (for the
    /// `quota.threshold` event).
    async fn claim_quota_counted(&self, claim: &QuotaClaim) -> Result<ClaimedUnits>;
    /// Charges up to `units` more on a period, as far as `ceiling` (the limit plus an
    /// overdraft) plus top-ups allows; returns the units charged (a settled reservation
    /// that cost more than it reserved). The counter row is created if missing.
    async fn charge_quota(
        &self,
        subject: &str,
        period_start: UnixMillis,
        ceiling: u64,
        units: u64,
        now: UnixMillis,
    ) -> Result<u64>;
    /// Gives back units claimed and not spent (a replica shutting down or going idle).
    async fn release_quota(
        &self,
        subject: &str,
        period_start: UnixMillis,
        units: u64,
        now: UnixMillis,
    ) -> Result<()>;
    /// Tops up or resets a period's counter, with its audit event, in one transaction;
    /// returns the counter afterwards.
    async fn adjust_quota(
        &self,
        subject: &str,
        period_start: UnixMillis,
        limit: u64,
        change: QuotaChange,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<QuotaCounter>;
    /// The counters of these (subject, period) pairs; pairs never claimed are absent.
    async fn quota_counters(
        &self,
        cells: &[(String, UnixMillis)],
    ) -> Result<HashMap<(String, UnixMillis), QuotaCounter>>;
}

/// Admin tokens, stored as digests.
#[async_trait::async_trait]
pub trait AdminTokenStore: Send + Sync + 'static {
    /// Stores a new admin token (`revoke_time` ignored).
    async fn add_admin_token(&self, token: &AdminTokenRecord) -> Result<()>;
    /// Every stored admin token, revoked ones included, oldest first.
    async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>>;
    /// Revokes a token; false when no such unrevoked token exists.
    async fn revoke_admin_token(&self, id: &str, now: UnixMillis) -> Result<bool>;
}

/// Reservations of metered calls, shared by every replica: a reservation made on one is
/// settled on any.
#[async_trait::async_trait]
pub trait ReservationStore: Send + Sync + 'static {
    async fn insert_reservation(&self, r: &Reservation) -> Result<()>;
    async fn get_reservation(&self, id: &str) -> Result<Option<Reservation>>;
    /// Settles an open reservation with `s`, in one conditional step: `false` (and nothing
    /// written) when it was settled already, by a Settle or by expiry.
    async fn settle_reservation(&self, id: &str, s: &Settlement) -> Result<bool>;
    /// Records what a settlement charged, once its adjustments are made.
    async fn record_charge(&self, id: &str, charged: u64, overage: u64) -> Result<()>;
    /// Settles at the reserved amount every reservation still open at its expiry; how many.
    /// Also finalizes, at the reserved amount, settlements won more than a minute ago whose
    /// charge was never recorded (their process stopped in between).
    async fn expire_reservations(&self, now: UnixMillis) -> Result<u64>;
    /// Deletes reservations settled (and recorded) before `settled_before`; how many.
    async fn prune_reservations(&self, settled_before: UnixMillis) -> Result<u64>;
    /// Totals over the reservations of `key_id` (else every key of `tenant_id`) made in
    /// `[start, end)`.
    async fn reservation_totals(
        &self,
        key_id: Option<&str>,
        tenant_id: &str,
        start: UnixMillis,
        end: UnixMillis,
    ) -> Result<ReservationTotals>;
}

/// Which deliveries `list_deliveries` returns, newest event first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    pub tenant_id: String,
    /// Unset: every endpoint of the tenant.
    pub endpoint_id: Option<String>,
    /// Unset: every event.
    pub event_id: Option<String>,
    pub state: Option<DeliveryState>,
    /// Resume before this (event seq, delivery id), exclusive.
    pub before: Option<(i64, String)>,
    pub limit: u64,
}

/// A delivery claimed by a replica, with what it needs to make the attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery: Delivery,
    pub event: Event,
    pub endpoint: Endpoint,
}

/// What an attempt left: the delivery finished (delivered or given up), or due again.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub state: DeliveryState,
    pub now: UnixMillis,
    /// When a pending delivery is tried again.
    pub next_attempt: UnixMillis,
    pub status: u16,
    pub error: String,
}

/// The event outbox. Events of a change are written by the change's own write (see
/// [`TenantStore`]); this appends the others and reads them back in commit order.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends events whose ids are derived from what happened: one already stored is
    /// skipped. Each new event gets a delivery for every enabled endpoint of its tenant
    /// that wants its type, in the same transaction. Returns the events that were new.
    async fn append_events(&self, events: &[Event]) -> Result<Vec<Event>>;
    /// Events after `after_seq`, in commit order; of one tenant, or of every tenant.
    async fn events_after(
        &self,
        tenant_id: Option<&str>,
        after_seq: i64,
        limit: u64,
    ) -> Result<Vec<Event>>;
    async fn event_by_id(&self, id: &str) -> Result<Option<Event>>;
    /// The seq of the newest event (0: none yet).
    async fn last_event_seq(&self) -> Result<i64>;
    /// Deletes events from before `before` with no pending delivery, and finished
    /// deliveries created before it; returns the rows deleted. First fails the pending
    /// deliveries that can go nowhere: those of deleted endpoints, and those created before
    /// `give_up_before` whose endpoint is disabled (their retry period is over).
    async fn prune_events(
        &self,
        now: UnixMillis,
        before: UnixMillis,
        give_up_before: UnixMillis,
    ) -> Result<u64>;
    /// Bumped after every commit through this store handle that wrote an event, so local
    /// followers wake at once (other replicas' events are found by polling).
    fn written(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Tenants' webhook endpoints and the deliveries of events to them.
#[async_trait::async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Inserts an endpoint unless its tenant has `max_per_tenant` already, with its audit
    /// event, in one transaction.
    async fn create_endpoint(
        &self,
        e: &Endpoint,
        max_per_tenant: usize,
        audit: AuditEvent,
    ) -> Result<()>;
    async fn get_endpoint(&self, id: &str) -> Result<Option<Endpoint>>;
    /// A tenant's endpoints, oldest first.
    async fn list_endpoints(&self, tenant_id: &str) -> Result<Vec<Endpoint>>;
    /// Writes an endpoint's settable fields and secrets, with its audit event, if it is
    /// still as read at `read_at` (its update_time): a concurrent change (a rotation, the
    /// deliverer disabling it) is never overwritten; FAILED_PRECONDITION then. Enabling a
    /// disabled endpoint makes its pending deliveries due at once, their retry period
    /// starting again.
    async fn update_endpoint(
        &self,
        e: &Endpoint,
        read_at: UnixMillis,
        audit: AuditEvent,
    ) -> Result<()>;
    /// Deletes an endpoint and fails its pending deliveries; false when it did not exist.
    async fn delete_endpoint(&self, id: &str, now: UnixMillis, audit: AuditEvent) -> Result<bool>;
    /// Leases up to `limit` due deliveries to `owner` until `now + lease`: pending ones of
    /// enabled endpoints, held by nobody, whose endpoint has no earlier pending delivery
    /// for the same key (deliveries are in order per endpoint and key). A delivery is
    /// leased to one replica at a time.
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: UnixMillis,
        lease: std::time::Duration,
        limit: u64,
    ) -> Result<Vec<Claimed>>;
    /// Records an attempt of a delivery `owner` holds and releases it; false when the
    /// lease was lost (another replica holds it now) and nothing was written.
    async fn finish_attempt(&self, id: &str, owner: &str, a: &AttemptRecord) -> Result<bool>;
    /// When a delivery to the endpoint last succeeded.
    async fn last_success(&self, endpoint_id: &str) -> Result<Option<UnixMillis>>;
    /// Disables an enabled endpoint with `reason`, with its audit event; whether it did.
    async fn disable_endpoint(
        &self,
        id: &str,
        reason: &str,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<bool>;
    /// Deliveries matching `query`, newest event first.
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>>;
    /// New pending deliveries of a stored event to these endpoints, due at `now`.
    async fn redeliver(
        &self,
        event: &Event,
        endpoint_ids: &[String],
        now: UnixMillis,
    ) -> Result<Vec<Delivery>>;
    /// Pending deliveries: how many, and when the oldest was created.
    async fn delivery_backlog(&self) -> Result<(u64, Option<UnixMillis>)>;
}

/// Whether the store answers (health and readiness).
#[async_trait::async_trait]
pub trait StoreHealth: Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;
}

/// One store seen through each of its seams: what the composition root hands out, one
/// field to each consumer.
#[derive(Clone)]
pub struct Stores {
    pub tenants: Arc<dyn TenantStore>,
    pub keys: Arc<dyn KeyStore>,
    pub imports: Arc<dyn ImportStore>,
    pub audit: Arc<dyn AuditLog>,
    pub usage: Arc<dyn UsageStore>,
    pub quotas: Arc<dyn QuotaStore>,
    pub tokens: Arc<dyn AdminTokenStore>,
    pub reservations: Arc<dyn ReservationStore>,
    pub events: Arc<dyn EventLog>,
    pub webhooks: Arc<dyn WebhookStore>,
    pub health: Arc<dyn StoreHealth>,
}

impl Stores {
    /// Every seam backed by the one sea-orm store.
    pub fn of(store: SeaStore) -> Stores {
        let s = Arc::new(store);
        Stores {
            tenants: s.clone(),
            keys: s.clone(),
            imports: s.clone(),
            audit: s.clone(),
            usage: s.clone(),
            quotas: s.clone(),
            tokens: s.clone(),
            reservations: s.clone(),
            events: s.clone(),
            webhooks: s.clone(),
            health: s,
        }
    }
}
