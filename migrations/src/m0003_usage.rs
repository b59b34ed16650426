//! Usage aggregates: counts per key, bucket (UTC minute or day), endpoint and reason, and
//! each key's all-time use count.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0003_usage"
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    UseCount,
}

#[derive(DeriveIden)]
enum Usage {
    KeyId,
    TenantId,
    Bucket,
    Endpoint,
    Reason,
    Count,
    Cost,
}

/// `usage_minutes` and `usage_days` have the same shape.
fn usage_table(name: &str) -> TableCreateStatement {
    Table::create()
        .table(Alias::new(name))
        .col(ColumnDef::new(Usage::KeyId).string_len(40).not_null())
        .col(ColumnDef::new(Usage::TenantId).string_len(64).not_null())
        .col(ColumnDef::new(Usage::Bucket).big_integer().not_null())
        .col(ColumnDef::new(Usage::Endpoint).string_len(160).not_null())
        .col(ColumnDef::new(Usage::Reason).string_len(32).not_null())
        .col(ColumnDef::new(Usage::Count).big_integer().not_null())
        .col(ColumnDef::new(Usage::Cost).big_integer().not_null())
        .primary_key(
            Index::create()
                .col(Usage::KeyId)
                .col(Usage::Bucket)
                .col(Usage::Endpoint)
                .col(Usage::Reason),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ApiKeys::Table)
                .add_column(
                    ColumnDef::new(ApiKeys::UseCount)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .to_owned(),
        )
        .await?;
        for name in ["usage_minutes", "usage_days"] {
            m.create_table(usage_table(name)).await?;
            // A tenant's usage over a range.
            m.create_index(
                Index::create()
                    .name(format!("ix_{name}_tenant_bucket"))
                    .table(Alias::new(name))
                    .col(Usage::TenantId)
                    .col(Usage::Bucket)
                    .to_owned(),
            )
            .await?;
            // Pruning by age.
            m.create_index(
                Index::create()
                    .name(format!("ix_{name}_bucket"))
                    .table(Alias::new(name))
                    .col(Usage::Bucket)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for name in ["usage_minutes", "usage_days"] {
            m.drop_table(Table::drop().table(Alias::new(name)).to_owned())
                .await?;
        }
        m.alter_table(
            Table::alter()
                .table(ApiKeys::Table)
                .drop_column(ApiKeys::UseCount)
                .to_owned(),
        )
        .await
    }
}
