//! [`super::super::TenantStore`] on sea-orm. Tenants and plans.
use super::*;

#[async_trait::async_trait]
impl TenantStore for SeaStore {
    async fn upsert_tenant(&self, t: Tenant, audit: AuditEvent) -> Result<Tenant> {
        let row = tenants::ActiveModel {
            id: Set(t.id.clone()),
            display_name: Set(t.display_name.clone()),
            policy: Set(to_json(&t.policy)?),
            create_time: Set(t.create_time.0),
            update_time: Set(t.update_time.0),
        };
        let txn = self.db.begin().await.map_err(db_err)?;
        let columns = [
            tenants::Column::DisplayName,
            tenants::Column::Policy,
            tenants::Column::UpdateTime,
        ];
        tenants::Entity::insert(row)
            .on_conflict(
                OnConflict::column(tenants::Column::Id)
                    .update_columns(columns)
                    .to_owned(),
            )
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let stored = tenants::Entity::find_by_id(t.id.clone())
            .one(&txn)
            .await
            .map_err(db_err)?
            .ok_or_else(|| Error::internal("tenant vanished after upsert"))?;
        let stored = tenant_from(stored)?;
        self.commit_audited(txn, &audit, crate::domain::event::Subject::Tenant(&stored))
            .await?;
        Ok(stored)
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let m = tenants::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(db_err)?;
        m.map(tenant_from).transpose()
    }

    async fn list_tenants(&self, after: Option<&str>, limit: u64) -> Result<Vec<Tenant>> {
        let mut q = tenants::Entity::find()
            .order_by_asc(tenants::Column::Id)
            .limit(limit);
        if let Some(after) = after {
            q = q.filter(tenants::Column::Id.gt(after));
        }
        q.all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(tenant_from)
            .collect()
    }

    async fn upsert_plan(&self, p: Plan, audit: AuditEvent) -> Result<Plan> {
        let row = plans::ActiveModel {
            id: Set(p.id.clone()),
            display_name: Set(p.display_name.clone()),
            limits: Set(to_json(&p.limits)?),
            create_time: Set(p.create_time.0),
            update_time: Set(p.update_time.0),
        };
        let txn = self.db.begin().await.map_err(db_err)?;
        plans::Entity::insert(row)
            .on_conflict(
                OnConflict::column(plans::Column::Id)
                    .update_columns([
                        plans::Column::DisplayName,
                        plans::Column::Limits,
                        plans::Column::UpdateTime,
                    ])
                    .to_owned(),
            )
            .exec(&txn)
            .await
            .map_err(db_err)?;
        self.commit_audited(txn, &audit, crate::domain::event::Subject::Other)
            .await?;
        self.get_plan(&p.id)
            .await?
            .ok_or_else(|| Error::internal("plan vanished after upsert"))
    }

    async fn get_plan(&self, id: &str) -> Result<Option<Plan>> {
        plans::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(db_err)?
            .map(plan_from)
            .transpose()
    }

    async fn list_plans(&self) -> Result<Vec<Plan>> {
        plans::Entity::find()
            .order_by_asc(plans::Column::Id)
            .all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(plan_from)
            .collect()
    }
}
