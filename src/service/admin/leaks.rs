//! A leaked key's tenant policy, applied: revoke, disable or only record, always audited
//! with the reported source and URL, and announced so every replica drops the key at once.
use super::AdminService;
use crate::domain::leak::{LeakAction, LeakOutcome, LeakReport};
use crate::domain::{Caller, KeyRecord};
use crate::error::Result;

impl AdminService {
    /// Applies `key`'s tenant's `on_leak` to it (the caller has identified the key from its
    /// secret and may act on its tenant). Returns what was done.
    pub async fn respond_to_leak(
        &self,
        mut key: KeyRecord,
        report: &LeakReport,
        caller: &Caller,
    ) -> Result<LeakOutcome> {
        let tenant = self.tenant(&key.tenant_id).await?;
        let now = self.now();
        let policy = tenant.policy.on_leak;
        let (url, source) = report.scrubbed();
        let outcome = if key.is_revoked(now) {
            LeakOutcome::AlreadyRevoked
        } else {
            match policy {
                LeakAction::Revoke => LeakOutcome::Revoked,
                LeakAction::Disable if key.enabled => LeakOutcome::Disabled,
                LeakAction::Disable | LeakAction::Notify => LeakOutcome::Notified,
            }
        };
        let detail = format!(
            "on_leak={}; done={}; source={source}; url={url}",
            policy.as_str(),
            outcome.as_str()
        );
        match outcome {
            LeakOutcome::Revoked => {
                let audit = self.event(
                    caller,
                    "report_leak",
                    &key.tenant_id,
                    &key.id,
                    vec!["revoke_time".into()],
                    detail,
                );
                let reason = if source.is_empty() {
                    "leaked: reported by a secret scanner".to_owned()
                } else {
                    format!("leaked: reported by a secret scanner ({source})")
                };
                let reason: String = reason.chars().take(super::MAX_REASON_CHARS).collect();
                key = self
                    .keys
                    .revoke_key(&key.id, now, &reason, now, audit)
                    .await?;
            }
            LeakOutcome::Disabled => {
                key.enabled = false;
                key.update_time = now;
                let audit = self.event(
                    caller,
                    "report_leak",
                    &key.tenant_id,
                    &key.id,
                    vec!["enabled".into()],
                    detail,
                );
                self.keys.update_key_settings(&key, audit).await?;
            }
            LeakOutcome::Notified | LeakOutcome::AlreadyRevoked => {
                let audit = self.event(
                    caller,
                    "report_leak",
                    &key.tenant_id,
                    &key.id,
                    vec![],
                    detail,
                );
                self.audit.record_audit_event(&audit).await?;
            }
        }
        if matches!(outcome, LeakOutcome::Revoked | LeakOutcome::Disabled) {
            self.listener.key_changed(&key.id, &key.lookup_id);
        }
        tracing::warn!(
            key_id = %key.id,
            tenant_id = %key.tenant_id,
            action = outcome.as_str(),
            "leaked key reported"
        );
        Ok(outcome)
    }
}
