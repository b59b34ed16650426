//! The audit trail of a tenant or a key.
use super::paging::{next_token, time_token, Page};
use super::AdminService;
use crate::domain::access::Need;
use crate::domain::{text, AuditEvent, Caller, UnixMillis};
use crate::error::{Error, Result};
use crate::store::AuditQuery;

impl AdminService {
    /// A tenant's or a key's audit trail, newest first, optionally within [start, end).
    pub async fn list_audit_events(
        &self,
        caller: &Caller,
        tenant_id: &str,
        key_id: &str,
        page: Page,
        start: Option<UnixMillis>,
        end: Option<UnixMillis>,
    ) -> Result<(Vec<AuditEvent>, String)> {
        if tenant_id.is_empty() && key_id.is_empty() {
            return Err(Error::invalid(
                "tenant_id",
                "tenant_id or key_id is required",
            ));
        }
        if let (Some(start), Some(end)) = (start, end) {
            if start > end {
                return Err(Error::invalid("start_time", "must not be after end_time"));
            }
        }
        if !tenant_id.is_empty() {
            text::validate_tenant_id("tenant_id", tenant_id)?;
            caller.principal.may(Need::Read, tenant_id)?;
            // A tenant that does not exist is NOT_FOUND, not an empty trail.
            self.tenant(tenant_id).await?;
        }
        // A tenant-limited token reads a key's trail only if the key is its tenant's.
        if !key_id.is_empty() && !caller.principal.is_platform() {
            self.key_for(key_id, caller, Need::Read).await?;
        }
        let limit = page.limit()?;
        let before = page.time_cursor("aud_")?;
        let query = AuditQuery {
            tenant_id: Some(tenant_id.to_owned()).filter(|t| !t.is_empty()),
            key_id: Some(key_id.to_owned()).filter(|k| !k.is_empty()),
            before,
            start,
            end,
            limit,
        };
        let events = self.audit.list_audit_events(&query).await?;
        let next = next_token(&events, limit, |e| time_token(e.time, &e.id));
        Ok((events, next))
    }
}
