//! Plan templates: limits and a scope ceiling shared by every tenant on a plan.
use super::AdminService;
use crate::domain::access::Need;
use crate::domain::{text, Caller, Plan};
use crate::error::Result;

impl AdminService {
    /// Creates or replaces a plan template (platform admins). Tenants on it see the change
    /// on their next check, on every replica.
    pub async fn upsert_plan(&self, mut plan: Plan, caller: &Caller) -> Result<Plan> {
        text::validate_tenant_id("plan.id", &plan.id)?;
        caller.principal.may(Need::Platform, "")?;
        text::validate_text(
            "plan.display_name",
            &plan.display_name,
            text::MAX_NAME_CHARS,
        )?;
        plan.limits.validate("plan")?;
        let now = self.now();
        plan.create_time = now;
        plan.update_time = now;
        let audit = self.event(
            caller,
            "upsert_plan",
            "",
            "",
            vec!["display_name".into(), "limits".into()],
            format!("plan {}", plan.id),
        );
        let plan = self.tenants.upsert_plan(plan, audit).await?;
        // Cached tenants hold their effective policy: drop those on this plan.
        for t in self.all_tenants().await? {
            if t.policy.plan_id == plan.id {
                self.listener.tenant_changed(&t.id);
            }
        }
        tracing::info!(plan_id = %plan.id, "plan upserted");
        Ok(plan)
    }

    /// Every plan (any admin identity may read them).
    pub async fn list_plans(&self, caller: &Caller) -> Result<Vec<Plan>> {
        let _ = caller;
        self.tenants.list_plans().await
    }
}
