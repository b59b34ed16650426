//! Keygate's schema, as ordered sea-orm migrations. `keygate migrate` applies them; `serve`
//! applies them on SQLite and refuses to start on an outdated PostgreSQL schema unless asked.
pub use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_audit_events;
mod m0003_usage;
mod m0004_admin_roles;
mod m0005_imports;
mod m0006_plans;
mod m0007_quotas;
mod m0008_reservations;
mod m0009_events;

/// Every migration, oldest first. Never edit one that has shipped: add a new one.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_audit_events::Migration),
            Box::new(m0003_usage::Migration),
            Box::new(m0004_admin_roles::Migration),
            Box::new(m0005_imports::Migration),
            Box::new(m0006_plans::Migration),
            Box::new(m0007_quotas::Migration),
            Box::new(m0008_reservations::Migration),
            Box::new(m0009_events::Migration),
        ]
    }
}
