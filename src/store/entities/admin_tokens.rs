//! The `admin_tokens` table.
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
