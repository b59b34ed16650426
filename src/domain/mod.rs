//! Keygate's domain: keys, tenants, scopes, IP allowlists, policy and decisions. Pure types
//! and rules; nothing here knows about gRPC, protobuf or the database.
pub mod access;
pub mod change;
pub mod event;
pub mod import;
pub mod ip;
pub mod key;
pub mod leak;
pub mod policy;
pub mod quota;
pub mod reason;
pub mod record;
pub mod reservation;
pub mod scope;
pub mod text;
pub mod time;
pub mod usage;
pub mod webhook;

pub use ip::IpAllowlist;
pub use key::{ApiKeyFormat, ParsedKey};
pub use policy::{ExpiryPolicy, PlanLimits, RateLimitSpec, TenantPolicy};
pub use record::{AuditEvent, CachedKey, Caller, KeyRecord, KeyState, NewKey, Plan, Tenant};
pub use scope::{Scope, ScopeSet};
pub use time::{Clock, ManualClock, SystemClock, UnixMillis};
