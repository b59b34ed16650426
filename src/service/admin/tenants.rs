//! Tenants and their key policy.
use super::paging::{id_token, next_token, Page};

/// What a ListTenants page token starts with.
const TENANT_TOKEN: &str = "tenants";
use super::AdminService;
use crate::domain::access::Need;
use crate::domain::{text, Caller, Tenant, TenantPolicy};
use crate::error::{Error, Result};

impl AdminService {
    pub async fn upsert_tenant(
        &self,
        id: String,
        display_name: String,
        policy: TenantPolicy,
        caller: &Caller,
    ) -> Result<Tenant> {
        text::validate_tenant_id("tenant.id", &id)?;
        caller.principal.may(Need::Platform, &id)?;
        text::validate_text("tenant.display_name", &display_name, text::MAX_NAME_CHARS)?;
        policy.validate("tenant.policy")?;
        if !policy.plan_id.is_empty() {
            text::validate_tenant_id("tenant.policy.plan_id", &policy.plan_id)?;
        }
        if !policy.plan_id.is_empty() && self.tenants.get_plan(&policy.plan_id).await?.is_none() {
            return Err(Error::precondition(
                "tenant.policy.plan_id",
                format!(
                    "no plan {:?}; create it with UpsertPlan first",
                    policy.plan_id
                ),
            ));
        }
        let prefix = policy.effective_prefix();
        if let Some(r) = self.imports.rules().iter().find(|r| {
            r.tenant_id != id && crate::domain::import::prefixes_overlap(prefix, &r.key_prefix)
        }) {
            return Err(Error::precondition(
                "tenant.policy.key_prefix",
                format!(
                    "{prefix:?} overlaps the imported key prefix {:?} of tenant {:?}",
                    r.key_prefix, r.tenant_id
                ),
            ));
        }
        let now = self.now();
        let tenant = self
            .tenants
            .upsert_tenant(
                Tenant {
                    id: id.clone(),
                    display_name,
                    policy,
                    create_time: now,
                    update_time: now,
                },
                self.event(
                    caller,
                    "upsert_tenant",
                    &id,
                    "",
                    vec!["display_name".into(), "policy".into()],
                    String::new(),
                ),
            )
            .await?;
        self.listener.tenant_changed(&tenant.id);
        Ok(tenant)
    }

    pub async fn get_tenant(&self, id: &str, caller: &Caller) -> Result<Tenant> {
        text::validate_tenant_id("tenant_id", id)?;
        caller.principal.may(Need::Read, id)?;
        self.tenant(id).await
    }

    /// Tenants ordered by id; a tenant-limited token sees only its own.
    pub async fn list_tenants(&self, page: Page, caller: &Caller) -> Result<(Vec<Tenant>, String)> {
        let limit = page.limit()?;
        let after = page.id_cursor(TENANT_TOKEN)?;
        if let Some(own) = &caller.principal.tenant {
            let tenants = match (after.is_none(), self.tenants.get_tenant(own).await?) {
                (true, Some(t)) => vec![t],
                _ => vec![],
            };
            return Ok((tenants, String::new()));
        }
        let tenants = self.tenants.list_tenants(after.as_deref(), limit).await?;
        let next = next_token(&tenants, limit, |t| id_token(TENANT_TOKEN, &t.id));
        Ok((tenants, next))
    }
}
