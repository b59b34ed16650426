//! Quotas: a key's own quota (JSON, unset = its tenant's default) and one counter row per
//! quota subject and period.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0007_quotas"
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Quota,
}

#[derive(DeriveIden)]
enum QuotaCounters {
    Table,
    /// `key:<id>` or `tenant:<id>`.
    Subject,
    /// Start of the period (ms since the epoch); 0 for prepaid credits.
    PeriodStart,
    /// Units handed out: spent, or leased to a replica.
    Used,
    /// Units added by AdjustQuota on top of the limit (may be negative).
    Granted,
    /// The size of the latest claim (returned by the claim's UPDATE).
    LastClaim,
    UpdateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ApiKeys::Table)
                .add_column(ColumnDef::new(ApiKeys::Quota).text().null())
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(QuotaCounters::Table)
                .col(
                    ColumnDef::new(QuotaCounters::Subject)
                        .string_len(80)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(QuotaCounters::PeriodStart)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(QuotaCounters::Used)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(
                    ColumnDef::new(QuotaCounters::Granted)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(
                    ColumnDef::new(QuotaCounters::LastClaim)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(
                    ColumnDef::new(QuotaCounters::UpdateTime)
                        .big_integer()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(QuotaCounters::Subject)
                        .col(QuotaCounters::PeriodStart),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(QuotaCounters::Table).to_owned())
            .await?;
        m.alter_table(
            Table::alter()
                .table(ApiKeys::Table)
                .drop_column(ApiKeys::Quota)
                .to_owned(),
        )
        .await
    }
}
