//! sea-orm entities, one module per table. Rows mirror `migrations/`; conversion to the
//! domain happens in `store::sea`.
pub mod tenants {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub display_name: String,
        /// `TenantPolicy` as JSON.
        pub policy: String,
        pub create_time: i64,
        pub update_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_keys {
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
}

pub mod admin_tokens {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "admin_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Hex SHA-256 of the token. Tokens are 238-bit random strings, so a fast hash is
        /// enough; the token itself is never stored.
        pub token_digest: String,
        pub description: String,
        pub create_time: i64,
        /// `admin` or `viewer`.
        pub role: String,
        /// Unset: every tenant.
        pub tenant_id: Option<String>,
        pub revoke_time: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit_events {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub time: i64,
        pub actor: String,
        pub action: String,
        pub tenant_id: String,
        pub key_id: String,
        /// JSON list of field names.
        pub changed_fields: String,
        pub request_id: String,
        pub detail: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod import_prefixes {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "import_prefixes")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_prefix: String,
        pub tenant_id: String,
        /// `sha256` or `argon2`.
        pub format: String,
        pub lookup_len: i32,
        pub create_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod plans {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "plans")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub display_name: String,
        /// `PlanLimits` as JSON.
        pub limits: String,
        pub create_time: i64,
        pub update_time: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
