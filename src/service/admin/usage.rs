//! Usage reports of a key or a tenant, and the per-key counts key listings show.
use super::AdminService;
use crate::domain::access::Need;
use crate::domain::usage::{day_of, report_range, Granularity, Range, Report, StoredCount};
use crate::domain::{text, Caller, KeyRecord};
use crate::error::Result;
use crate::store::{BucketSize, UsageQuery};
use std::collections::HashMap;

impl AdminService {
    /// Each key's checks in the current UTC day: one query for all of them (no N+1).
    pub async fn uses_today(&self, keys: &[KeyRecord]) -> Result<HashMap<String, u64>> {
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        self.usage.uses_in_day(&ids, day_of(self.now())).await
    }

    /// One key's usage report.
    pub async fn key_usage(
        &self,
        caller: &Caller,
        key_id: &str,
        granularity: Granularity,
        range: Range,
        by_endpoint: bool,
    ) -> Result<Report> {
        let key = self.key_for(key_id, caller, Need::Read).await?;
        self.usage_report(key.tenant_id, Some(key.id), granularity, range, by_endpoint)
            .await
    }

    /// A tenant's usage report, summed over its keys.
    pub async fn tenant_usage(
        &self,
        caller: &Caller,
        tenant_id: &str,
        granularity: Granularity,
        range: Range,
        by_endpoint: bool,
    ) -> Result<Report> {
        text::validate_tenant_id("tenant_id", tenant_id)?;
        caller.principal.may(Need::Read, tenant_id)?;
        self.tenant(tenant_id).await?;
        self.usage_report(tenant_id.to_owned(), None, granularity, range, by_endpoint)
            .await
    }

    async fn usage_report(
        &self,
        tenant_id: String,
        key_id: Option<String>,
        granularity: Granularity,
        (start, end): Range,
        by_endpoint: bool,
    ) -> Result<Report> {
        let range = report_range(granularity, start, end, self.now())?;
        let query = UsageQuery {
            tenant_id,
            key_id,
            size: match granularity {
                Granularity::Minute => BucketSize::Minute,
                Granularity::Day | Granularity::Total => BucketSize::Day,
            },
            start: range.0,
            end: range.1,
        };
        let rows = self.usage.usage(&query).await?;
        let reservations = self
            .reservations
            .reservation_totals(query.key_id.as_deref(), &query.tenant_id, range.0, range.1)
            .await?;
        let mut report = Report::build(
            granularity,
            range,
            by_endpoint,
            rows.iter().map(|r| StoredCount {
                bucket: r.bucket,
                endpoint: &r.endpoint,
                reason: &r.reason,
                count: r.count,
                cost: r.cost,
            }),
        );
        report.reservations = reservations;
        Ok(report)
    }
}
