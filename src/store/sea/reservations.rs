//! [`super::super::ReservationStore`] on sea-orm: one row per reservation; settling is one
//! conditional UPDATE, so a reservation settles once whichever replica asks.
use super::*;
use crate::domain::reservation::{
    Reservation, ReservationTotals, ReservedLimits, ReservedQuota, Settlement,
};
use crate::store::ReservationStore;

/// The JSON `spent` column: where the reserved units went.
#[derive(serde::Serialize, serde::Deserialize)]
struct Spent {
    limits: Vec<ReservedLimits>,
    quotas: Vec<ReservedQuota>,
    max_overdraft: u64,
    origin: String,
    #[serde(default)]
    limiter_fallback: bool,
}

fn u(row: &sea_orm::QueryResult, col: &str) -> Result<u64> {
    Ok(u64::try_from(row.try_get::<i64>("", col).map_err(db_err)?).unwrap_or(0))
}

fn opt_u(row: &sea_orm::QueryResult, col: &str) -> Result<Option<u64>> {
    Ok(row
        .try_get::<Option<i64>>("", col)
        .map_err(db_err)?
        .map(|n| u64::try_from(n).unwrap_or(0)))
}

fn reservation_from(row: &sea_orm::QueryResult) -> Result<Reservation> {
    let spent: Spent = serde_json::from_str(&row.try_get::<String>("", "spent").map_err(db_err)?)
        .map_err(corrupt("stored reservation"))?;
    let reserved = u(row, "reserved")?;
    let settlement = match row
        .try_get::<Option<i64>>("", "settle_time")
        .map_err(db_err)?
    {
        None => None,
        Some(t) => {
            let actual = opt_u(row, "actual")?.unwrap_or(reserved);
            let charged = opt_u(row, "charged")?;
            Some(Settlement {
                actual,
                // Not recorded yet: the settlement's adjustments are still being made, and
                // until they are, the reserved units are what is spent.
                charged: charged.unwrap_or(reserved),
                overage: opt_u(row, "overage")?.unwrap_or(0),
                settle_time: UnixMillis(t),
                expired: row.try_get::<bool>("", "expired").map_err(db_err)?,
                pending: charged.is_none(),
            })
        }
    };
    Ok(Reservation {
        id: row.try_get("", "id").map_err(db_err)?,
        key_id: row.try_get("", "key_id").map_err(db_err)?,
        tenant_id: row.try_get("", "tenant_id").map_err(db_err)?,
        reserved,
        reserve_time: UnixMillis(row.try_get("", "reserve_time").map_err(db_err)?),
        expire_time: UnixMillis(row.try_get("", "expire_time").map_err(db_err)?),
        limits: spent.limits,
        quotas: spent.quotas,
        max_overdraft: spent.max_overdraft,
        origin: spent.origin,
        limiter_fallback: spent.limiter_fallback,
        settlement,
    })
}

#[async_trait::async_trait]
impl ReservationStore for SeaStore {
    async fn insert_reservation(&self, r: &Reservation) -> Result<()> {
        let spent = to_json(&Spent {
            limits: r.limits.clone(),
            quotas: r.quotas.clone(),
            max_overdraft: r.max_overdraft,
            origin: r.origin.clone(),
            limiter_fallback: r.limiter_fallback,
        })?;
        let insert = sql(
            self.db.get_database_backend(),
            "INSERT INTO reservations (id, key_id, tenant_id, reserved, reserve_time, \
             expire_time, spent, expired) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                r.id.clone().into(),
                r.key_id.clone().into(),
                r.tenant_id.clone().into(),
                to_i64(r.reserved).into(),
                r.reserve_time.0.into(),
                r.expire_time.0.into(),
                spent.into(),
                false.into(),
            ],
        );
        self.db.execute(insert).await.map_err(db_err)?;
        Ok(())
    }

    async fn get_reservation(&self, id: &str) -> Result<Option<Reservation>> {
        let q = sql(
            self.db.get_database_backend(),
            "SELECT id, key_id, tenant_id, reserved, reserve_time, expire_time, spent, \
             settle_time, actual, charged, overage, expired FROM reservations WHERE id = $1",
            [id.into()],
        );
        match self.db.query_one(q).await.map_err(db_err)? {
            Some(row) => Ok(Some(reservation_from(&row)?)),
            None => Ok(None),
        }
    }

    async fn settle_reservation(&self, id: &str, s: &Settlement) -> Result<bool> {
        let update = sql(
            self.db.get_database_backend(),
            "UPDATE reservations SET settle_time = $1, actual = $2, expired = $3 \
             WHERE id = $4 AND settle_time IS NULL",
            [
                s.settle_time.0.into(),
                to_i64(s.actual).into(),
                s.expired.into(),
                id.into(),
            ],
        );
        Ok(self
            .db
            .execute(update)
            .await
            .map_err(db_err)?
            .rows_affected()
            == 1)
    }

    async fn record_charge(&self, id: &str, charged: u64, overage: u64) -> Result<()> {
        let update = sql(
            self.db.get_database_backend(),
            "UPDATE reservations SET charged = $1, overage = $2 WHERE id = $3",
            [to_i64(charged).into(), to_i64(overage).into(), id.into()],
        );
        self.db.execute(update).await.map_err(db_err)?;
        Ok(())
    }

    async fn expire_reservations(&self, now: UnixMillis) -> Result<u64> {
        let backend = self.db.get_database_backend();
        let update = sql(
            backend,
            "UPDATE reservations SET settle_time = $1, actual = reserved, charged = reserved, \
             overage = 0, expired = $2 WHERE settle_time IS NULL AND expire_time <= $1",
            [now.0.into(), true.into()],
        );
        let expired = self
            .db
            .execute(update)
            .await
            .map_err(db_err)?
            .rows_affected();
        // A settlement won by a process that stopped before recording its adjustments:
        // after a minute, what is spent is what was reserved.
        let stale = sql(
            backend,
            "UPDATE reservations SET charged = reserved, overage = 0 \
             WHERE settle_time IS NOT NULL AND charged IS NULL AND settle_time <= $1",
            [(now.0 - 60_000).into()],
        );
        self.db.execute(stale).await.map_err(db_err)?;
        Ok(expired)
    }

    async fn prune_reservations(&self, settled_before: UnixMillis) -> Result<u64> {
        let delete = sql(
            self.db.get_database_backend(),
            "DELETE FROM reservations WHERE settle_time IS NOT NULL AND charged IS NOT NULL \
             AND settle_time < $1",
            [settled_before.0.into()],
        );
        Ok(self
            .db
            .execute(delete)
            .await
            .map_err(db_err)?
            .rows_affected())
    }

    async fn reservation_totals(
        &self,
        key_id: Option<&str>,
        tenant_id: &str,
        start: UnixMillis,
        end: UnixMillis,
    ) -> Result<ReservationTotals> {
        let (filter, subject) = match key_id {
            Some(k) => ("key_id = $1", k.to_owned()),
            None => ("tenant_id = $1", tenant_id.to_owned()),
        };
        let q = sql(
            self.db.get_database_backend(),
            &format!(
                "SELECT CAST(COALESCE(SUM(reserved), 0) AS BIGINT) AS reserved, \
                 CAST(COALESCE(SUM(CASE WHEN settle_time IS NOT NULL AND NOT expired \
                   THEN COALESCE(charged, reserved) ELSE 0 END), 0) AS BIGINT) AS settled, \
                 CAST(COALESCE(SUM(CASE WHEN expired THEN reserved ELSE 0 END), 0) AS BIGINT) \
                   AS expired_units, \
                 CAST(COALESCE(SUM(CASE WHEN settle_time IS NULL THEN reserved ELSE 0 END), 0) \
                   AS BIGINT) AS open_units, \
                 CAST(COALESCE(SUM(COALESCE(overage, 0)), 0) AS BIGINT) AS overage \
                 FROM reservations WHERE {filter} AND reserve_time >= $2 AND reserve_time < $3"
            ),
            [subject.into(), start.0.into(), end.0.into()],
        );
        let Some(row) = self.db.query_one(q).await.map_err(db_err)? else {
            return Ok(ReservationTotals::default());
        };
        let get = |col: &str| u(&row, col);
        Ok(ReservationTotals {
            reserved: get("reserved")?,
            settled: get("settled")?,
            expired: get("expired_units")?,
            open: get("open_units")?,
            overage: get("overage")?,
        })
    }
}
