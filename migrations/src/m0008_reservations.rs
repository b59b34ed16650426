//! Reservations of metered calls (CheckRequest.reserve), until settled and a while after:
//! what was reserved, where the units went (JSON), and how it was settled.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0008_reservations"
    }
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    /// `rsv_…`.
    Id,
    KeyId,
    TenantId,
    Reserved,
    ReserveTime,
    /// When an unsettled reservation settles at the reserved amount.
    ExpireTime,
    /// The limits and quota periods spent on, the overdraft and the reserving replica.
    Spent,
    /// Set once: by Settle, or by expiry.
    SettleTime,
    Actual,
    Charged,
    Overage,
    Expired,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Reservations::Table)
                .col(
                    ColumnDef::new(Reservations::Id)
                        .string_len(40)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(Reservations::KeyId)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Reservations::TenantId)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Reservations::Reserved)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Reservations::ReserveTime)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Reservations::ExpireTime)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(Reservations::Spent).text().not_null())
                .col(
                    ColumnDef::new(Reservations::SettleTime)
                        .big_integer()
                        .null(),
                )
                .col(ColumnDef::new(Reservations::Actual).big_integer().null())
                .col(ColumnDef::new(Reservations::Charged).big_integer().null())
                .col(ColumnDef::new(Reservations::Overage).big_integer().null())
                .col(
                    ColumnDef::new(Reservations::Expired)
                        .boolean()
                        .not_null()
                        .default(false),
                )
                .to_owned(),
        )
        .await?;
        // The expiry sweep finds unsettled reservations past their expiry.
        m.create_index(
            Index::create()
                .name("reservations_open_by_expiry")
                .table(Reservations::Table)
                .col(Reservations::SettleTime)
                .col(Reservations::ExpireTime)
                .to_owned(),
        )
        .await?;
        // Usage reports sum a key's (or tenant's) reservations over a time range.
        m.create_index(
            Index::create()
                .name("reservations_by_key_time")
                .table(Reservations::Table)
                .col(Reservations::KeyId)
                .col(Reservations::ReserveTime)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("reservations_by_tenant_time")
                .table(Reservations::Table)
                .col(Reservations::TenantId)
                .col(Reservations::ReserveTime)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Reservations::Table).to_owned())
            .await
    }
}
