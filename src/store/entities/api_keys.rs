//! The `api_keys` table.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub environment: String,
    pub lookup_id: String,
    pub key_prefix: String,
    pub display_prefix: String,
    /// argon2id PHC string of the full key. Never leaves the store layer except to verify.
    pub secret_hash: String,
    pub scopes: String,
    pub ip_allowlist: String,
    pub rate_limits: String,
    pub metadata: String,
    pub enabled: bool,
    pub create_time: i64,
    pub update_time: i64,
    pub expire_time: Option<i64>,
    pub last_used_time: Option<i64>,
    /// Checks counted against the key, all time.
    pub use_count: i64,
    pub revoke_time: Option<i64>,
    pub revoke_reason: Option<String>,
    pub rotated_from: Option<String>,
    /// The key's own `QuotaSpec` as JSON; unset = the tenant's default.
    pub quota: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
