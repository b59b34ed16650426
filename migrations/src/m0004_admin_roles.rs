//! Admin identities: a role (`admin` or `viewer`), an optional tenant the token is limited
//! to, and revocation.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0004_admin_roles"
    }
}

#[derive(DeriveIden)]
enum AdminTokens {
    Table,
    Role,
    TenantId,
    RevokeTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let columns = [
            ColumnDef::new(AdminTokens::Role)
                .string_len(16)
                .not_null()
                .default("admin")
                .to_owned(),
            ColumnDef::new(AdminTokens::TenantId)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(AdminTokens::RevokeTime)
                .big_integer()
                .null()
                .to_owned(),
        ];
        for mut c in columns {
            m.alter_table(
                Table::alter()
                    .table(AdminTokens::Table)
                    .add_column(&mut c)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for c in [
            AdminTokens::Role,
            AdminTokens::TenantId,
            AdminTokens::RevokeTime,
        ] {
            m.alter_table(
                Table::alter()
                    .table(AdminTokens::Table)
                    .drop_column(c)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
