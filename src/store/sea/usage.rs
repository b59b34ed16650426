//! [`super::super::UsageStore`] on sea-orm. Usage counts: flushed batches, reports, retention.
use super::*;

#[async_trait::async_trait]
impl UsageStore for SeaStore {
    async fn record_usage(&self, b: &UsageBatch) -> Result<()> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        for (table, cells) in [(MINUTES, &b.minutes), (DAYS, &b.days)] {
            for chunk in statement_chunks(cells) {
                let mut values = Vec::with_capacity(chunk.len() * 7);
                for c in chunk {
                    values.extend([
                        sea_orm::Value::from(c.key_id.clone()),
                        c.tenant_id.clone().into(),
                        c.bucket.0.into(),
                        c.endpoint.clone().into(),
                        c.reason.into(),
                        to_i64(c.count).into(),
                        to_i64(c.cost).into(),
                    ]);
                }
                let text = format!(
                    "INSERT INTO {table} (key_id, tenant_id, bucket, endpoint, reason, \"count\", \
                     \"cost\") VALUES {} ON CONFLICT (key_id, bucket, endpoint, reason) DO UPDATE \
                     SET \"count\" = {table}.\"count\" + excluded.\"count\", \
                     \"cost\" = {table}.\"cost\" + excluded.\"cost\"",
                    placeholders(backend, chunk.len(), 7)
                );
                txn.execute(sea_orm::Statement::from_sql_and_values(
                    backend, text, values,
                ))
                .await
                .map_err(db_err)?;
            }
        }
        // One UPDATE … FROM (VALUES …) per chunk of keys instead of one per key: with many
        // active keys the per-key statements were most of a flush's cost (the benchmark's
        // check_many_keys).
        let max = match backend {
            DbBackend::Postgres => "GREATEST",
            _ => "MAX",
        };
        for chunk in statement_chunks(&b.keys) {
            let mut values = Vec::with_capacity(chunk.len() * 3);
            for k in chunk {
                values.extend([
                    sea_orm::Value::from(k.key_id.clone()),
                    to_i64(k.uses).into(),
                    k.last_used.0.into(),
                ]);
            }
            let text = format!(
                "UPDATE api_keys SET use_count = use_count + v.uses, \
                 last_used_time = {max}(COALESCE(last_used_time, v.last_used), v.last_used) \
                 FROM (SELECT column1 AS id, column2 AS uses, column3 AS last_used \
                 FROM (VALUES {}) AS t) AS v WHERE api_keys.id = v.id",
                placeholders(backend, chunk.len(), 3)
            );
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

/// Rows per statement, largest first. A flush writes its rows in statements of these sizes
/// only, so the same few statement texts come back flush after flush and the driver's
/// prepared-statement cache parses each once per connection (a statement sized to the
/// batch was parsed anew every flush: a tenth of a busy server's instructions).
const STATEMENT_ROWS: [usize; 5] = [256, 64, 16, 4, 1];

/// `rows` cut greedily into chunks of the [`STATEMENT_ROWS`] sizes (at most three of each
/// smaller size after the 256-row ones).
fn statement_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let n = STATEMENT_ROWS.into_iter().find(|&n| n <= rest.len())?;
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// `rows` tuples of `cols` parameters: `(?, ?), (?, ?)` on SQLite (plain `?`: numbered
/// ones make SQLite's parameter-name lookup quadratic in their number), `($1, $2), ($3,
/// $4)` on PostgreSQL.
fn placeholders(backend: DbBackend, rows: usize, cols: usize) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        s.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            match backend {
                DbBackend::Postgres => {
                    let _ = write!(s, "${}", r * cols + c + 1);
                }
                _ => s.push('?'),
            }
        }
        s.push(')');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_chunks_cover_every_row_in_order_with_few_sizes() {
        for n in [0, 1, 3, 4, 5, 255, 256, 257, 300, 1_000, 1_279] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "{n} rows");
            assert!(chunks.iter().all(|c| STATEMENT_ROWS.contains(&c.len())));
            assert!(
                chunks.windows(2).all(|w| w[0].len() >= w[1].len()),
                "largest first"
            );
            let small = chunks.iter().filter(|c| c.len() < 256).count();
            assert!(small <= 12, "{n} rows: {small} small statements");
        }
    }

    #[test]
    fn placeholders_are_plain_on_sqlite_and_numbered_on_postgres() {
        assert_eq!(
            placeholders(DbBackend::Sqlite, 2, 3),
            "(?, ?, ?), (?, ?, ?)"
        );
        assert_eq!(
            placeholders(DbBackend::Postgres, 2, 2),
            "($1, $2), ($3, $4)"
        );
    }
}
