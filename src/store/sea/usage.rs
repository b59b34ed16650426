//! [`super::super::UsageStore`] on sea-orm. Usage counts: flushed batches, reports, retention.
use super::*;

#[async_trait::async_trait]
impl UsageStore for SeaStore {
    async fn record_usage(&self, b: &UsageBatch) -> Result<()> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        for (table, cells) in [(MINUTES, &b.minutes), (DAYS, &b.days)] {
            // 7 parameters a row: far below SQLite's and PostgreSQL's bind limits.
            for chunk in cells.chunks(500) {
                let mut q = Query::insert();
                q.into_table(Alias::new(table)).columns(usage_cols([
                    "key_id",
                    "tenant_id",
                    "bucket",
                    "endpoint",
                    "reason",
                    "count",
                    "cost",
                ]));
                for c in chunk {
                    q.values([
                        c.key_id.clone().into(),
                        c.tenant_id.clone().into(),
                        c.bucket.0.into(),
                        c.endpoint.clone().into(),
                        c.reason.into(),
                        to_i64(c.count).into(),
                        to_i64(c.cost).into(),
                    ])
                    .map_err(|e| Error::Internal {
                        context: "usage insert",
                        source: Some(Box::new(e)),
                    })?;
                }
                let add = |col: &str| {
                    Expr::col((Alias::new(table), Alias::new(col)))
                        .add(Expr::col((Alias::new("excluded"), Alias::new(col))))
                };
                q.on_conflict(
                    OnConflict::columns(usage_cols(["key_id", "bucket", "endpoint", "reason"]))
                        .value(Alias::new("count"), add("count"))
                        .value(Alias::new("cost"), add("cost"))
                        .to_owned(),
                );
                txn.execute(backend.build(&q)).await.map_err(db_err)?;
            }
        }
        // One UPDATE … FROM (VALUES …) per 300 keys instead of one per key: with many
        // active keys the per-key statements were most of a flush's cost (the benchmark's
        // check_many_keys).
        let max = match backend {
            DbBackend::Postgres => "GREATEST",
            _ => "MAX",
        };
        for chunk in b.keys.chunks(300) {
            let mut values = Vec::with_capacity(chunk.len() * 3);
            let mut rows = Vec::with_capacity(chunk.len());
            for (i, k) in chunk.iter().enumerate() {
                rows.push(format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
                values.push(sea_orm::Value::from(k.key_id.clone()));
                values.push(to_i64(k.uses).into());
                values.push(k.last_used.0.into());
            }
            let text = format!(
                "UPDATE api_keys SET use_count = use_count + v.uses, \
                 last_used_time = {max}(COALESCE(last_used_time, v.last_used), v.last_used) \
                 FROM (SELECT column1 AS id, column2 AS uses, column3 AS last_used \
                 FROM (VALUES {}) AS t) AS v WHERE api_keys.id = v.id",
                rows.join(", ")
            );
            let text = match backend {
                DbBackend::Postgres => text,
                _ => text.replace('$', "?"),
            };
            txn.execute(sea_orm::Statement::from_sql_and_values(
                backend, text, values,
            ))
            .await
            .map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)
    }

    async fn usage(&self, uq: &UsageQuery) -> Result<Vec<UsageRow>> {
        let table = Alias::new(match uq.size {
            BucketSize::Minute => MINUTES,
            BucketSize::Day => DAYS,
        });
        let col = |c: &str| Expr::col(Alias::new(c));
        let mut q = Query::select();
        q.from(table)
            .columns(usage_cols(["bucket", "endpoint", "reason"]))
            .expr_as(
                Expr::cust(r#"CAST(SUM("count") AS BIGINT)"#),
                Alias::new("n"),
            )
            .expr_as(
                Expr::cust(r#"CAST(SUM("cost") AS BIGINT)"#),
                Alias::new("c"),
            )
            .and_where(col("tenant_id").eq(uq.tenant_id.as_str()))
            .and_where(col("bucket").gte(uq.start.0))
            .and_where(col("bucket").lt(uq.end.0))
            .group_by_columns(usage_cols(["bucket", "endpoint", "reason"]))
            .order_by(Alias::new("bucket"), Order::Asc)
            .order_by(Alias::new("endpoint"), Order::Asc);
        if let Some(k) = &uq.key_id {
            q.and_where(col("key_id").eq(k.as_str()));
        }
        let rows = self
            .db
            .query_all(self.db.get_database_backend().build(&q))
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let get_i = |c: &str| r.try_get::<i64>("", c).map_err(db_err);
                let get_s = |c: &str| r.try_get::<String>("", c).map_err(db_err);
                Ok(UsageRow {
                    bucket: UnixMillis(get_i("bucket")?),
                    endpoint: get_s("endpoint")?,
                    reason: get_s("reason")?,
                    count: u64::try_from(get_i("n")?).unwrap_or(0),
                    cost: u64::try_from(get_i("c")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn uses_in_day(
        &self,
        key_ids: &[String],
        day: UnixMillis,
    ) -> Result<HashMap<String, u64>> {
        if key_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let col = |c: &str| Expr::col(Alias::new(c));
        let mut q = Query::select();
        q.from(Alias::new(DAYS))
            .column(Alias::new("key_id"))
            .expr_as(
                Expr::cust(r#"CAST(SUM("count") AS BIGINT)"#),
                Alias::new("n"),
            )
            .and_where(col("bucket").eq(day.0))
            .and_where(col("key_id").is_in(key_ids.iter().map(String::as_str)))
            .group_by_col(Alias::new("key_id"));
        let rows = self
            .db
            .query_all(self.db.get_database_backend().build(&q))
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String>("", "key_id").map_err(db_err)?,
                    u64::try_from(r.try_get::<i64>("", "n").map_err(db_err)?).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn prune_usage(
        &self,
        minutes_before: UnixMillis,
        days_before: UnixMillis,
    ) -> Result<u64> {
        let backend = self.db.get_database_backend();
        let mut deleted = 0;
        for (table, before) in [(MINUTES, minutes_before), (DAYS, days_before)] {
            let mut q = Query::delete();
            q.from_table(Alias::new(table))
                .and_where(Expr::col(Alias::new("bucket")).lt(before.0));
            deleted += self
                .db
                .execute(backend.build(&q))
                .await
                .map_err(db_err)?
                .rows_affected();
        }
        Ok(deleted)
    }
}
