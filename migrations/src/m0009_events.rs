//! Key events: the outbox (`events`, one row per event, ordered by `seq` in commit order),
//! tenants' webhook endpoints, and one delivery row per (event, endpoint) until it is
//! delivered or given up.
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m0009_events"
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    /// Commit order: writers of events serialise on a lock, so a reader that has seen
    /// `seq` n never later finds a new event below it.
    Seq,
    /// `evt_…`: random for changes, derived from the occurrence for runtime events
    /// (rate limit, quota, expiry) so that writing one twice keeps one.
    Id,
    Type,
    Time,
    TenantId,
    /// Empty when the event is not about a key.
    KeyId,
    /// The event's `data` object, JSON.
    Data,
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    /// `whep_…`.
    Id,
    TenantId,
    Url,
    Description,
    /// JSON list of event types; empty = every type.
    EventTypes,
    /// `whsec_…`: the signing secret (it must be usable to sign, so it is kept as is).
    Secret,
    /// The secret before the last rotation, still signing until `previous_until`.
    PreviousSecret,
    PreviousUntil,
    Enabled,
    DisabledReason,
    CreateTime,
    UpdateTime,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    /// `dlv_…`.
    Id,
    EventSeq,
    EventId,
    EndpointId,
    TenantId,
    /// The event's key id (or empty): deliveries to one endpoint are in order per key.
    OrderKey,
    /// `pending`, `delivered` or `failed`.
    State,
    Attempts,
    NextAttemptTime,
    FirstAttemptTime,
    /// The replica holding the delivery, until `lease_until`.
    LeaseOwner,
    LeaseUntil,
    LastStatus,
    LastError,
    CreateTime,
    FinishTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Events::Table)
                .col(
                    ColumnDef::new(Events::Seq)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new(Events::Id).string_len(64).not_null())
                .col(ColumnDef::new(Events::Type).string_len(32).not_null())
                .col(ColumnDef::new(Events::Time).big_integer().not_null())
                .col(ColumnDef::new(Events::TenantId).string_len(64).not_null())
                .col(ColumnDef::new(Events::KeyId).string_len(64).not_null())
                .col(ColumnDef::new(Events::Data).text().not_null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("events_by_id")
                .table(Events::Table)
                .col(Events::Id)
                .unique()
                .to_owned(),
        )
        .await?;
        // A tenant's stream, from a cursor.
        m.create_index(
            Index::create()
                .name("events_by_tenant_seq")
                .table(Events::Table)
                .col(Events::TenantId)
                .col(Events::Seq)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("events_by_time")
                .table(Events::Table)
                .col(Events::Time)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookEndpoints::Table)
                .col(
                    ColumnDef::new(WebhookEndpoints::Id)
                        .string_len(40)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::TenantId)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::Url)
                        .string_len(2048)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::Description)
                        .string_len(600)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::EventTypes)
                        .text()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::Secret)
                        .string_len(100)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::PreviousSecret)
                        .string_len(100)
                        .null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::PreviousUntil)
                        .big_integer()
                        .null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::Enabled)
                        .boolean()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::DisabledReason)
                        .string_len(600)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::CreateTime)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookEndpoints::UpdateTime)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("webhook_endpoints_by_tenant")
                .table(WebhookEndpoints::Table)
                .col(WebhookEndpoints::TenantId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(WebhookDeliveries::Table)
                .col(
                    ColumnDef::new(WebhookDeliveries::Id)
                        .string_len(40)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::EventSeq)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::EventId)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::EndpointId)
                        .string_len(40)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::TenantId)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::OrderKey)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::State)
                        .string_len(16)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::Attempts)
                        .integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::NextAttemptTime)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::FirstAttemptTime)
                        .big_integer()
                        .null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::LeaseOwner)
                        .string_len(40)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::LeaseUntil)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::LastStatus)
                        .integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::LastError)
                        .string_len(300)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::CreateTime)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(WebhookDeliveries::FinishTime)
                        .big_integer()
                        .null(),
                )
                .to_owned(),
        )
        .await?;
        // The deliverer's claim: due pending deliveries, oldest event first.
        m.create_index(
            Index::create()
                .name("deliveries_due")
                .table(WebhookDeliveries::Table)
                .col(WebhookDeliveries::State)
                .col(WebhookDeliveries::NextAttemptTime)
                .to_owned(),
        )
        .await?;
        // Order per key: is an earlier delivery of this endpoint and key still pending?
        m.create_index(
            Index::create()
                .name("deliveries_by_endpoint_key")
                .table(WebhookDeliveries::Table)
                .col(WebhookDeliveries::EndpointId)
                .col(WebhookDeliveries::OrderKey)
                .col(WebhookDeliveries::EventSeq)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("deliveries_by_tenant_seq")
                .table(WebhookDeliveries::Table)
                .col(WebhookDeliveries::TenantId)
                .col(WebhookDeliveries::EventSeq)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            WebhookDeliveries::Table.into_iden(),
            WebhookEndpoints::Table.into_iden(),
            Events::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
