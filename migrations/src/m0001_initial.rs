//! Tenants, API keys and admin tokens.
//!
//! Times are milliseconds since the Unix epoch in BIGINT columns: identical on SQLite and
//! PostgreSQL, exact to the millisecond, and cheap to compare. List-valued settings
//! (scopes, allowlists, limits, metadata, policy) are JSON text: they are always read and
//! written whole with their row and never queried into.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0001_initial"
    }
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    DisplayName,
    Policy,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    TenantId,
    Name,
    Environment,
    LookupId,
    KeyPrefix,
    DisplayPrefix,
    SecretHash,
    Scopes,
    IpAllowlist,
    RateLimits,
    Metadata,
    Enabled,
    CreateTime,
    UpdateTime,
    ExpireTime,
    LastUsedTime,
    RevokeTime,
    RevokeReason,
    RotatedFrom,
}

#[derive(DeriveIden)]
enum AdminTokens {
    Table,
    Id,
    TokenDigest,
    Description,
    CreateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Tenants::Table)
                .col(
                    ColumnDef::new(Tenants::Id)
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(Tenants::DisplayName)
                        .string_len(100)
                        .not_null(),
                )
                .col(ColumnDef::new(Tenants::Policy).text().not_null())
                .col(ColumnDef::new(Tenants::CreateTime).big_integer().not_null())
                .col(ColumnDef::new(Tenants::UpdateTime).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ApiKeys::Table)
                .col(
                    ColumnDef::new(ApiKeys::Id)
                        .string_len(40)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(ApiKeys::TenantId).string_len(64).not_null())
                .col(ColumnDef::new(ApiKeys::Name).string_len(400).not_null())
                .col(
                    ColumnDef::new(ApiKeys::Environment)
                        .string_len(16)
                        .not_null(),
                )
                .col(ColumnDef::new(ApiKeys::LookupId).string_len(16).not_null())
                .col(ColumnDef::new(ApiKeys::KeyPrefix).string_len(40).not_null())
                .col(
                    ColumnDef::new(ApiKeys::DisplayPrefix)
                        .string_len(8)
                        .not_null(),
                )
                .col(ColumnDef::new(ApiKeys::SecretHash).text().not_null())
                .col(ColumnDef::new(ApiKeys::Scopes).text().not_null())
                .col(ColumnDef::new(ApiKeys::IpAllowlist).text().not_null())
                .col(ColumnDef::new(ApiKeys::RateLimits).text().not_null())
                .col(ColumnDef::new(ApiKeys::Metadata).text().not_null())
                .col(ColumnDef::new(ApiKeys::Enabled).boolean().not_null())
                .col(ColumnDef::new(ApiKeys::CreateTime).big_integer().not_null())
                .col(ColumnDef::new(ApiKeys::UpdateTime).big_integer().not_null())
                .col(ColumnDef::new(ApiKeys::ExpireTime).big_integer().null())
                .col(ColumnDef::new(ApiKeys::LastUsedTime).big_integer().null())
                .col(ColumnDef::new(ApiKeys::RevokeTime).big_integer().null())
                .col(ColumnDef::new(ApiKeys::RevokeReason).string_len(600).null())
                .col(ColumnDef::new(ApiKeys::RotatedFrom).string_len(40).null())
                .foreign_key(
                    ForeignKey::create()
                        .from(ApiKeys::Table, ApiKeys::TenantId)
                        .to(Tenants::Table, Tenants::Id)
                        .on_delete(ForeignKeyAction::Restrict),
                )
                .to_owned(),
        )
        .await?;
        // The hot path: every uncached check finds its row by the key's lookup id.
        m.create_index(
            Index::create()
                .name("ux_api_keys_lookup_id")
                .table(ApiKeys::Table)
                .col(ApiKeys::LookupId)
                .unique()
                .to_owned(),
        )
        .await?;
        // ListKeys pages through one tenant's keys oldest first.
        m.create_index(
            Index::create()
                .name("ix_api_keys_tenant_created")
                .table(ApiKeys::Table)
                .col(ApiKeys::TenantId)
                .col(ApiKeys::CreateTime)
                .col(ApiKeys::Id)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(AdminTokens::Table)
                .col(
                    ColumnDef::new(AdminTokens::Id)
                        .string_len(40)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(AdminTokens::TokenDigest)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(AdminTokens::Description)
                        .string_len(200)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(AdminTokens::CreateTime)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(AdminTokens::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(ApiKeys::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Tenants::Table).to_owned())
            .await
    }
}
