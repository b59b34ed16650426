//! [`super::super::QuotaStore`] on sea-orm. Quota period counters shared by every replica.
use super::*;

/// Creates a period's counter row if it is missing (claims, charges and top-ups then update
/// it in one conditional step).
fn counter_row(
    backend: DbBackend,
    subject: &str,
    period_start: UnixMillis,
    now: UnixMillis,
) -> sea_orm::Statement {
    sql(
        backend,
        "INSERT INTO quota_counters (subject, period_start, used, granted, last_claim, \
         update_time) VALUES ($1, $2, 0, 0, 0, $3) \
         ON CONFLICT (subject, period_start) DO NOTHING",
        [subject.into(), period_start.0.into(), now.0.into()],
    )
}

#[async_trait::async_trait]
impl QuotaStore for SeaStore {
    async fn claim_quota_counted(&self, c: &QuotaClaim) -> Result<crate::store::ClaimedUnits> {
        let backend = self.db.get_database_backend();
        let (max, min) = match backend {
            DbBackend::Postgres => ("GREATEST", "LEAST"),
            _ => ("MAX", "MIN"),
        };
        // SET expressions all read the row as it was, so `last_claim` and `used` see the
        // same remainder; the WHERE makes check-and-take one step on either database.
        let amount = format!("{max}($2, {min}($3, ($1 + granted - used) / 8))");
        let update = sql(
            backend,
            &format!(
                "UPDATE quota_counters SET last_claim = {amount}, used = used + {amount}, \
                 update_time = $4 WHERE subject = $5 AND period_start = $6 \
                 AND $1 + granted - used >= $2 RETURNING last_claim, used, granted"
            ),
            [
                to_i64(c.limit).into(),
                to_i64(c.need).into(),
                to_i64(c.want.max(c.need)).into(),
                c.now.0.into(),
                c.subject.clone().into(),
                c.period_start.0.into(),
            ],
        );
        let claimed =
            |row: Option<sea_orm::QueryResult>| -> Result<Option<crate::store::ClaimedUnits>> {
                let Some(r) = row else { return Ok(None) };
                let n = |c: &str| r.try_get::<i64>("", c).map_err(db_err);
                Ok(Some(crate::store::ClaimedUnits {
                    units: u64::try_from(n("last_claim")?).unwrap_or(0),
                    used: u64::try_from(n("used")?).unwrap_or(0),
                    granted: n("granted")?,
                }))
            };
        if let Some(n) = claimed(self.db.query_one(update.clone()).await.map_err(db_err)?)? {
            return Ok(n);
        }
        // No row (first claim of the period), or not enough left: create the row if it is
        // missing and try once more.
        let insert = counter_row(backend, &c.subject, c.period_start, c.now);
        // Another replica may have created it meanwhile: the update decides either way.
        self.db.execute(insert).await.map_err(db_err)?;
        Ok(claimed(self.db.query_one(update).await.map_err(db_err)?)?.unwrap_or_default())
    }

    async fn charge_quota(
        &self,
        subject: &str,
        period_start: UnixMillis,
        ceiling: u64,
        units: u64,
        now: UnixMillis,
    ) -> Result<u64> {
        if units == 0 {
            return Ok(0);
        }
        let backend = self.db.get_database_backend();
        let min = match backend {
            DbBackend::Postgres => "LEAST",
            _ => "MIN",
        };
        let insert = counter_row(backend, subject, period_start, now);
        self.db.execute(insert).await.map_err(db_err)?;
        let amount = format!("{min}($2, $1 + granted - used)");
        let update = sql(
            backend,
            &format!(
                "UPDATE quota_counters SET last_claim = {amount}, used = used + {amount}, \
                 update_time = $3 WHERE subject = $4 AND period_start = $5 \
                 AND $1 + granted - used > 0 RETURNING last_claim"
            ),
            [
                to_i64(ceiling).into(),
                to_i64(units).into(),
                now.0.into(),
                subject.into(),
                period_start.0.into(),
            ],
        );
        match self.db.query_one(update).await.map_err(db_err)? {
            Some(row) => Ok(
                u64::try_from(row.try_get::<i64>("", "last_claim").map_err(db_err)?).unwrap_or(0),
            ),
            None => Ok(0),
        }
    }

    async fn release_quota(
        &self,
        subject: &str,
        period_start: UnixMillis,
        units: u64,
        now: UnixMillis,
    ) -> Result<()> {
        let backend = self.db.get_database_backend();
        let release = sql(
            backend,
            "UPDATE quota_counters SET used = CASE WHEN used >= $1 THEN used - $1 ELSE 0 END, \
             update_time = $2 WHERE subject = $3 AND period_start = $4",
            [
                to_i64(units).into(),
                now.0.into(),
                subject.into(),
                period_start.0.into(),
            ],
        );
        self.db.execute(release).await.map_err(db_err)?;
        Ok(())
    }

    async fn adjust_quota(
        &self,
        subject: &str,
        period_start: UnixMillis,
        limit: u64,
        change: QuotaChange,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<QuotaCounter> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        let insert = counter_row(backend, subject, period_start, now);
        txn.execute(insert).await.map_err(db_err)?;
        let (set, value) = match change {
            QuotaChange::Add(d) => ("granted = granted + $1", d),
            QuotaChange::SetRemaining(n) => (
                "granted = $1 + used",
                // remaining = limit + granted - used = n  ⇒  granted = n - limit + used
                to_i64(n).saturating_sub(to_i64(limit)),
            ),
        };
        let update = sql(
            backend,
            &format!(
                "UPDATE quota_counters SET {set}, update_time = $2 \
                 WHERE subject = $3 AND period_start = $4 RETURNING used, granted"
            ),
            [
                value.into(),
                now.0.into(),
                subject.into(),
                period_start.0.into(),
            ],
        );
        let row = txn
            .query_one(update)
            .await
            .map_err(db_err)?
            .ok_or(Error::Internal {
                context: "quota counter row vanished in its transaction",
                source: None,
            })?;
        let counter = QuotaCounter {
            used: u64::try_from(row.try_get::<i64>("", "used").map_err(db_err)?).unwrap_or(0),
            granted: row.try_get::<i64>("", "granted").map_err(db_err)?,
        };
        self.commit_audited(txn, &audit, crate::domain::event::Subject::Other)
            .await?;
        Ok(counter)
    }

    async fn quota_counters(
        &self,
        cells: &[(String, UnixMillis)],
    ) -> Result<HashMap<(String, UnixMillis), QuotaCounter>> {
        let mut out = HashMap::new();
        if cells.is_empty() {
            return Ok(out);
        }
        let backend = self.db.get_database_backend();
        for chunk in cells.chunks(400) {
            let subjects: Vec<&str> = chunk.iter().map(|(s, _)| s.as_str()).collect();
            let starts: Vec<i64> = chunk.iter().map(|(_, p)| p.0).collect();
            let q = Query::select()
                .columns(usage_cols(["subject", "period_start", "used", "granted"]))
                .from(Alias::new("quota_counters"))
                .and_where(Expr::col(Alias::new("subject")).is_in(subjects))
                .and_where(Expr::col(Alias::new("period_start")).is_in(starts))
                .to_owned();
            for row in self.db.query_all(backend.build(&q)).await.map_err(db_err)? {
                let key = (
                    row.try_get::<String>("", "subject").map_err(db_err)?,
                    UnixMillis(row.try_get::<i64>("", "period_start").map_err(db_err)?),
                );
                if !chunk.contains(&key) {
                    continue;
                }
                out.insert(
                    key,
                    QuotaCounter {
                        used: u64::try_from(row.try_get::<i64>("", "used").map_err(db_err)?)
                            .unwrap_or(0),
                        granted: row.try_get::<i64>("", "granted").map_err(db_err)?,
                    },
                );
            }
        }
        Ok(out)
    }
}
