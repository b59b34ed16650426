//! The audit trail: one row per KeyAdmin write, inserted in the write's own transaction.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0002_audit_events"
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    Time,
    Actor,
    Action,
    TenantId,
    KeyId,
    ChangedFields,
    RequestId,
    Detail,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(AuditEvents::Table)
                .col(
                    ColumnDef::new(AuditEvents::Id)
                        .string_len(40)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(AuditEvents::Time).big_integer().not_null())
                .col(ColumnDef::new(AuditEvents::Actor).string_len(64).not_null())
                .col(
                    ColumnDef::new(AuditEvents::Action)
                        .string_len(32)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(AuditEvents::TenantId)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(AuditEvents::KeyId).string_len(40).not_null())
                .col(ColumnDef::new(AuditEvents::ChangedFields).text().not_null())
                .col(
                    ColumnDef::new(AuditEvents::RequestId)
                        .string_len(128)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(AuditEvents::Detail)
                        .string_len(600)
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        // A tenant's or a key's trail, newest first.
        m.create_index(
            Index::create()
                .name("ix_audit_tenant_time")
                .table(AuditEvents::Table)
                .col(AuditEvents::TenantId)
                .col(AuditEvents::Time)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_audit_key_time")
                .table(AuditEvents::Table)
                .col(AuditEvents::KeyId)
                .col(AuditEvents::Time)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await
    }
}
