//! Plan templates: limits and a scope ceiling shared by the tenants on a plan.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0006_plans"
    }
}

#[derive(DeriveIden)]
enum Plans {
    Table,
    Id,
    DisplayName,
    Limits,
    CreateTime,
    UpdateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Plans::Table)
                .col(
                    ColumnDef::new(Plans::Id)
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(Plans::DisplayName)
                        .string_len(200)
                        .not_null(),
                )
                .col(ColumnDef::new(Plans::Limits).text().not_null())
                .col(ColumnDef::new(Plans::CreateTime).big_integer().not_null())
                .col(ColumnDef::new(Plans::UpdateTime).big_integer().not_null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Plans::Table).to_owned())
            .await
    }
}
