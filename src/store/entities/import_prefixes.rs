//! The `import_prefixes` table.
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
