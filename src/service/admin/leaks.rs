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
        key: KeyRecord,
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
        let detail = leak_detail(policy, outcome, &source, &url);
        let event = |changed: Vec<String>, detail: String| {
            self.event(
                caller,
                "report_leak",
                &key.tenant_id,
                &key.id,
                changed,
                detail,
            )
        };
        let outcome = match outcome {
            LeakOutcome::Revoked => {
                let reason = if source.is_empty() {
                    "leaked: reported by a secret scanner".to_owned()
                } else {
                    format!("leaked: reported by a secret scanner ({source})")
                };
                let reason: String = reason.chars().take(super::MAX_REASON_CHARS).collect();
                let audit = event(vec!["revoke_time".into()], detail);
                let after = self
                    .keys
                    .revoke_key(&key.id, now, &reason, now, audit)
                    .await?;
                // Revoked by someone else meanwhile: the store wrote nothing (no event).
                if after.revoke_time == Some(now) && after.revoke_reason.as_deref() == Some(&reason)
                {
                    LeakOutcome::Revoked
                } else {
                    self.record_leak(
                        caller,
                        &key,
                        policy,
                        LeakOutcome::AlreadyRevoked,
                        &source,
                        &url,
                    )
                    .await?
                }
            }
            LeakOutcome::Disabled => {
                let audit = event(vec!["enabled".into()], detail);
                if self.keys.disable_key(&key.id, now, audit).await? {
                    LeakOutcome::Disabled
                } else {
                    // Disabled meanwhile: nothing more to do than record the report.
                    self.record_leak(caller, &key, policy, LeakOutcome::Notified, &source, &url)
                        .await?
                }
            }
            other => {
                self.audit
                    .record_audit_event(&event(vec![], detail))
                    .await?;
                other
            }
        };
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

    /// Records a report that changed nothing.
    async fn record_leak(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        policy: LeakAction,
        outcome: LeakOutcome,
        source: &str,
        url: &str,
    ) -> Result<LeakOutcome> {
        let audit = self.event(
            caller,
            "report_leak",
            &key.tenant_id,
            &key.id,
            vec![],
            leak_detail(policy, outcome, source, url),
        );
        self.audit.record_audit_event(&audit).await?;
        Ok(outcome)
    }
}

fn leak_detail(policy: LeakAction, outcome: LeakOutcome, source: &str, url: &str) -> String {
    format!(
        "on_leak={}; done={}; source={source}; url={url}",
        policy.as_str(),
        outcome.as_str()
    )
}
