//! Imported keys: the rule per imported key prefix, and lookup ids long enough for the
//! imported namespaces (`sha256:<64 hex>`, `imp:<prefix><id>`).
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0005_imports"
    }
}

#[derive(DeriveIden)]
enum ImportPrefixes {
    Table,
    KeyPrefix,
    TenantId,
    Format,
    LookupLen,
    CreateTime,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    LookupId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ImportPrefixes::Table)
                .col(
                    ColumnDef::new(ImportPrefixes::KeyPrefix)
                        .string_len(40)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(ImportPrefixes::TenantId)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ImportPrefixes::Format)
                        .string_len(16)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ImportPrefixes::LookupLen)
                        .integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ImportPrefixes::CreateTime)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        // SQLite does not enforce VARCHAR lengths (and cannot alter a column).
        if m.get_database_backend() == DbBackend::Postgres {
            m.alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .modify_column(ColumnDef::new(ApiKeys::LookupId).string_len(128).not_null())
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ImportPrefixes::Table).to_owned())
            .await
    }
}
