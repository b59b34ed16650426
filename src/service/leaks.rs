//! Leaked keys: a report's tokens are identified the way a check identifies a presented
//! key (shape and checksum, else an imported prefix; then one indexed lookup and one
//! verify), and each key found gets its tenant's `on_leak` (`admin::respond_to_leak`).
//!
//! What a reporter learns: only whether a token is a key of this Keygate. An unknown
//! lookup id costs a verify against a dummy hash, as in a check, so timing does not tell
//! a made-up id from a wrong secret. Every reporter has a budget of tokens per minute
//! (each token may cost an argon2 verify); a token repeated in one report is looked at
//! once; and reports verify one token at a time, so they never hold more than one of the
//! verifier's permits that checks need.
use super::admin::AdminService;
use super::check::lookup_and_verify;
use super::imports::ImportRegistry;
use crate::domain::access::{self, Need, Role};
use crate::domain::leak::{LeakReport, LeakVerdict, MAX_TOKENS_PER_REPORT};
use crate::domain::{Caller, Clock, RateLimitSpec};
use crate::error::{Error, Result};
use crate::hashing::SecretHasher;
use crate::limiter::memory::MemoryLimiter;
use crate::limiter::RateLimiter;
use crate::metrics::Metrics;
use crate::store::KeyStore;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;

/// How a report arrived (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A secret scanning partner's signed POST on the `[leaks]` listener.
    Partner,
    /// `KeyAdmin/ReportLeakedKeys`.
    Admin,
}

impl Channel {
    fn label(self) -> &'static str {
        match self {
            Channel::Partner => "partner",
            Channel::Admin => "admin",
        }
    }
}

pub struct LeakResponder {
    keys: Arc<dyn KeyStore>,
    hasher: SecretHasher,
    imports: Arc<ImportRegistry>,
    admin: AdminService,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Tokens per minute per reporter.
    budget: Vec<RateLimitSpec>,
    spent: MemoryLimiter,
    /// One verify at a time for all reports together.
    verifying: tokio::sync::Semaphore,
}

impl LeakResponder {
    pub fn new(
        keys: Arc<dyn KeyStore>,
        hasher: SecretHasher,
        imports: Arc<ImportRegistry>,
        admin: AdminService,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        tokens_per_minute: u64,
    ) -> Self {
        LeakResponder {
            keys,
            hasher,
            imports,
            admin,
            clock,
            metrics,
            budget: vec![RateLimitSpec {
                name: "leak_tokens".into(),
                // Config validation keeps it at least a full report.
                limit: tokens_per_minute.max(MAX_TOKENS_PER_REPORT as u64),
                window: Duration::from_secs(60),
            }],
            spent: MemoryLimiter::new(100_000),
            verifying: tokio::sync::Semaphore::new(1),
        }
    }

    /// One verdict per report, in order. `caller` is who acts (an admin, or the partner
    /// program's identity); a key of a tenant `caller` may not write is `Unknown`.
    /// `reporter` names the budget the tokens are counted against.
    pub async fn report(
        &self,
        reports: &[LeakReport],
        caller: &Caller,
        reporter: &str,
        channel: Channel,
    ) -> Result<Vec<LeakVerdict>> {
        // Acting on a key is a write: viewers are refused before anything is looked up.
        if caller.principal.role != Role::Admin {
            return Err(access::denied());
        }
        if reports.is_empty() {
            return Err(Error::invalid("keys", "at least one key is required"));
        }
        if reports.len() > MAX_TOKENS_PER_REPORT {
            return Err(Error::invalid(
                "keys",
                format!(
                    "has {} keys; at most {MAX_TOKENS_PER_REPORT} per report",
                    reports.len()
                ),
            ));
        }
        let spent = self
            .spent
            .check(
                reporter,
                &self.budget,
                reports.len() as u64,
                self.clock.now(),
                false,
            )
            .await?;
        if !spent.allowed {
            self.metrics.leak_refused("over_budget");
            let retry_after = spent.status.and_then(|s| s.retry_after);
            return Err(Error::ResourceExhausted {
                message: format!(
                    "this reporter may report {} keys per minute; retry later",
                    self.budget[0].limit
                ),
                retry_after,
            });
        }
        let mut verdicts: Vec<LeakVerdict> = Vec::with_capacity(reports.len());
        for (i, r) in reports.iter().enumerate() {
            let token = r.token.expose_secret();
            let seen = reports[..i]
                .iter()
                .position(|o| o.token.expose_secret() == token);
            if let Some(j) = seen {
                // The same token twice: one look, one action, the same answer.
                verdicts.push(verdicts[j].clone());
                continue;
            }
            let v = self.verdict(r, caller).await?;
            let (finding, action) = match &v {
                LeakVerdict::Found { action, .. } => ("found", Some(action.as_str())),
                LeakVerdict::NotAKey => ("not_a_key", None),
                LeakVerdict::Unknown => ("unknown", None),
            };
            self.metrics.leak_report(channel.label(), finding, action);
            verdicts.push(v);
        }
        Ok(verdicts)
    }

    async fn verdict(&self, report: &LeakReport, caller: &Caller) -> Result<LeakVerdict> {
        let token = report.token.expose_secret();
        let Some((lookup_id, head)) = self.imports.locate(token) else {
            return Ok(LeakVerdict::NotAKey);
        };
        // Always one verify (a dummy hash for an unknown id), as a check does.
        let permit = self
            .verifying
            .acquire()
            .await
            .map_err(|_| Error::internal("leak verifier closed"))?;
        let found = lookup_and_verify(
            self.keys.as_ref(),
            &self.hasher,
            &lookup_id,
            &head,
            SecretString::from(token.to_owned()),
        )
        .await?;
        drop(permit);
        let Some(record) = found else {
            return Ok(LeakVerdict::Unknown);
        };
        if caller
            .principal
            .may(Need::Write, &record.tenant_id)
            .is_err()
        {
            return Ok(LeakVerdict::Unknown);
        }
        let (key_id, tenant_id) = (record.id.clone(), record.tenant_id.clone());
        let action = self.admin.respond_to_leak(record, report, caller).await?;
        Ok(LeakVerdict::Found {
            key_id,
            tenant_id,
            action,
        })
    }
}
