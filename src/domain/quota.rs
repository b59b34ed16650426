//! Quotas: a budget of calls (weighted by cost) per calendar period in the tenant's time
//! zone, or prepaid credits that never refill.
//!
//! Pure calendar arithmetic lives here; spending lives in `service::quota`, counting in
//! the store.
use super::time::UnixMillis;
use crate::error::{Error, Result};
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use serde::{Deserialize, Serialize};

/// Largest quota a policy may set (fits the store's BIGINT with room for top-ups).
pub const MAX_QUOTA: u64 = 1 << 53;

/// When a quota refills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Day,
    Week,
    Month,
    /// Prepaid credits: spent down, topped up only by `AdjustQuota`.
    Never,
}

/// `limit` units of cost per period. Serialised as JSON in policies, plans and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaSpec {
    pub limit: u64,
    pub period: QuotaPeriod,
    /// Periods start at this instant's local time of day (day), weekday and time (week),
    /// or day of month and time (month; clamped to short months). `None`: midnight,
    /// Monday, the 1st.
    pub refill_anchor: Option<UnixMillis>,
}

/// One period: `[start, end)`; `end` is `None` for credits. `start` is 0 for credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: UnixMillis,
    pub end: Option<UnixMillis>,
}

impl Window {
    pub fn contains(&self, t: UnixMillis) -> bool {
        t >= self.start && self.end.is_none_or(|e| t < e)
    }
}

/// Whose quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaOwner {
    Key,
    Tenant,
}

impl QuotaOwner {
    /// The name a refusal reports, and the counter's subject prefix.
    pub fn name(self) -> &'static str {
        match self {
            QuotaOwner::Key => "key",
            QuotaOwner::Tenant => "tenant",
        }
    }

    /// The store's counter subject: `key:<id>` or `tenant:<id>`.
    pub fn subject(self, id: &str) -> String {
        format!("{}:{id}", self.name())
    }
}

/// A stored period counter: units handed out (spent, or leased to a replica) and units
/// added by `AdjustQuota` on top of the limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaCounter {
    pub used: u64,
    pub granted: i64,
}

/// A top-up or reset of the current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaChange {
    /// Adds (or, negative, removes) units for the current period.
    Add(i64),
    /// Makes exactly this many units remain in the current period.
    SetRemaining(u64),
}

/// A quota's figures in its current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaStatus {
    pub owner: QuotaOwner,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    pub window: Window,
}

impl QuotaStatus {
    pub fn new(owner: QuotaOwner, spec: &QuotaSpec, window: Window, c: QuotaCounter) -> Self {
        QuotaStatus {
            owner,
            limit: spec.limit,
            used: c.used,
            remaining: remaining(spec.limit, c),
            window,
        }
    }
}

/// Units left: limit plus top-ups minus units handed out, never below zero.
pub fn remaining(limit: u64, c: QuotaCounter) -> u64 {
    let total = i128::from(limit) + i128::from(c.granted) - i128::from(c.used);
    u64::try_from(total.max(0)).unwrap_or(u64::MAX)
}

/// A tenant's IANA time zone; empty = UTC.
pub fn time_zone(field: &str, name: &str) -> Result<TimeZone> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    jiff::tz::db().get(name).map_err(|_| {
        Error::invalid(
            field,
            format!("{name:?} is not an IANA time zone name (e.g. \"Europe/Berlin\")"),
        )
    })
}

fn calendar(e: jiff::Error) -> Error {
    Error::Internal {
        context: "quota period out of the calendar's range",
        source: Some(Box::new(e)),
    }
}

fn millis(z: &Zoned) -> UnixMillis {
    UnixMillis(z.timestamp().as_millisecond())
}

impl QuotaSpec {
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.limit > MAX_QUOTA {
            return Err(Error::invalid(
                format!("{field}.limit"),
                format!("must be at most {MAX_QUOTA}"),
            ));
        }
        if self.limit == 0 && self.period != QuotaPeriod::Never {
            return Err(Error::invalid(
                format!("{field}.limit"),
                "must be at least 1 for a quota that refills (prepaid credits may start at 0)",
            ));
        }
        if self.period == QuotaPeriod::Never && self.refill_anchor.is_some() {
            return Err(Error::invalid(
                format!("{field}.refill_anchor"),
                "has no meaning for prepaid credits (period NEVER); leave it unset",
            ));
        }
        if let Some(a) = self.refill_anchor {
            Timestamp::from_millisecond(a.0)
                .map_err(|_| Error::invalid(format!("{field}.refill_anchor"), "is out of range"))?;
        }
        Ok(())
    }

    /// The period holding `now` in time zone `tz`.
    pub fn window(&self, now: UnixMillis, tz: &TimeZone) -> Result<Window> {
        if self.period == QuotaPeriod::Never {
            return Ok(Window {
                start: UnixMillis(0),
                end: None,
            });
        }
        let ts = Timestamp::from_millisecond(now.0).map_err(calendar)?;
        let local = ts.to_zoned(tz.clone());
        let anchor = match self.refill_anchor {
            Some(a) => Some(
                Timestamp::from_millisecond(a.0)
                    .map_err(calendar)?
                    .to_zoned(tz.clone()),
            ),
            None => None,
        };
        let time = anchor.as_ref().map_or(Time::midnight(), |a| a.time());
        // A local date at the anchor's time of day; a time skipped by a DST change moves
        // forward (jiff's "compatible" rule).
        let at = |d: Date| d.to_datetime(time).to_zoned(tz.clone()).map_err(calendar);
        let (start, end) = match self.period {
            QuotaPeriod::Day => {
                let mut day = local.date();
                if at(day)?.timestamp() > ts {
                    day = day.yesterday().map_err(calendar)?;
                }
                (at(day)?, at(day.tomorrow().map_err(calendar)?)?)
            }
            QuotaPeriod::Week => {
                let weekday = anchor
                    .as_ref()
                    .map_or(0, |a| a.weekday().to_monday_zero_offset());
                let today = local.date();
                let back = (today.weekday().to_monday_zero_offset() - weekday).rem_euclid(7);
                let mut day = today.checked_sub(back.days()).map_err(calendar)?;
                if at(day)?.timestamp() > ts {
                    day = day.checked_sub(7.days()).map_err(calendar)?;
                }
                (at(day)?, at(day.checked_add(7.days()).map_err(calendar)?)?)
            }
            QuotaPeriod::Month => {
                let dom = anchor.as_ref().map_or(1, |a| a.day());
                // The anchor's day of month in the month of `first`, clamped to its length.
                let in_month = |first: Date| {
                    Date::new(first.year(), first.month(), dom.min(first.days_in_month()))
                        .map_err(calendar)
                };
                let mut first = local.date().first_of_month();
                if at(in_month(first)?)?.timestamp() > ts {
                    first = first.checked_sub(1.month()).map_err(calendar)?;
                }
                let next = first.checked_add(1.month()).map_err(calendar)?;
                (at(in_month(first)?)?, at(in_month(next)?)?)
            }
            QuotaPeriod::Never => unreachable!("handled above"),
        };
        Ok(Window {
            start: millis(&start),
            end: Some(millis(&end)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> UnixMillis {
        UnixMillis(rfc3339.parse::<Timestamp>().unwrap().as_millisecond())
    }

    fn win(spec: QuotaSpec, now: &str, tz: &str) -> (UnixMillis, UnixMillis) {
        let w = spec.window(ms(now), &time_zone("tz", tz).unwrap()).unwrap();
        assert!(w.contains(ms(now)));
        (w.start, w.end.unwrap())
    }

    fn spec(period: QuotaPeriod, anchor: Option<&str>) -> QuotaSpec {
        QuotaSpec {
            limit: 10,
            period,
            refill_anchor: anchor.map(ms),
        }
    }

    #[test]
    fn day_week_month_in_utc() {
        let d = spec(QuotaPeriod::Day, None);
        assert_eq!(
            win(d, "2026-03-10T23:59:59Z", "UTC"),
            (ms("2026-03-10T00:00:00Z"), ms("2026-03-11T00:00:00Z"))
        );
        // 2026-03-11 is a Wednesday: weeks start on Monday by default.
        let w = spec(QuotaPeriod::Week, None);
        assert_eq!(
            win(w, "2026-03-11T12:00:00Z", "UTC"),
            (ms("2026-03-09T00:00:00Z"), ms("2026-03-16T00:00:00Z"))
        );
        let m = spec(QuotaPeriod::Month, None);
        assert_eq!(
            win(m, "2026-02-28T23:00:00Z", "UTC"),
            (ms("2026-02-01T00:00:00Z"), ms("2026-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn anchors_set_time_weekday_and_clamped_day() {
        // Billing on the 31st: February's period starts on the 28th.
        let m = spec(QuotaPeriod::Month, Some("2026-01-31T09:30:00Z"));
        assert_eq!(
            win(m, "2026-03-05T00:00:00Z", "UTC"),
            (ms("2026-02-28T09:30:00Z"), ms("2026-03-31T09:30:00Z"))
        );
        assert_eq!(
            win(m, "2026-01-31T09:29:59Z", "UTC"),
            (ms("2025-12-31T09:30:00Z"), ms("2026-01-31T09:30:00Z"))
        );
        // Anchored on a Friday at 17:00: the week runs Friday 17:00 to Friday 17:00.
        let w = spec(QuotaPeriod::Week, Some("2026-01-02T17:00:00Z"));
        assert_eq!(
            win(w, "2026-03-13T16:59:59Z", "UTC"),
            (ms("2026-03-06T17:00:00Z"), ms("2026-03-13T17:00:00Z"))
        );
        let d = spec(QuotaPeriod::Day, Some("2020-01-01T06:00:00Z"));
        assert_eq!(
            win(d, "2026-03-10T05:00:00Z", "UTC"),
            (ms("2026-03-09T06:00:00Z"), ms("2026-03-10T06:00:00Z"))
        );
    }

    #[test]
    fn local_midnight_in_other_zones_and_across_dst() {
        let d = spec(QuotaPeriod::Day, None);
        // Kolkata is UTC+05:30: its day starts at 18:30 UTC the day before.
        assert_eq!(
            win(d, "2026-03-10T18:29:00Z", "Asia/Kolkata"),
            (ms("2026-03-09T18:30:00Z"), ms("2026-03-10T18:30:00Z"))
        );
        assert_eq!(
            win(d, "2026-03-10T18:30:00Z", "Asia/Kolkata").0,
            ms("2026-03-10T18:30:00Z")
        );
        // New York springs forward on 2026-03-08: that day has 23 hours.
        let (s, e) = win(d, "2026-03-08T12:00:00Z", "America/New_York");
        assert_eq!(
            (s, e),
            (ms("2026-03-08T05:00:00Z"), ms("2026-03-09T04:00:00Z"))
        );
        let m = spec(QuotaPeriod::Month, None);
        assert_eq!(
            win(m, "2026-11-01T03:00:00Z", "America/New_York"),
            (ms("2026-10-01T04:00:00Z"), ms("2026-11-01T04:00:00Z"))
        );
    }

    #[test]
    fn credits_never_end() {
        let c = QuotaSpec {
            limit: 0,
            period: QuotaPeriod::Never,
            refill_anchor: None,
        };
        c.validate("quota").unwrap();
        let w = c
            .window(ms("2030-01-01T00:00:00Z"), &TimeZone::UTC)
            .unwrap();
        assert_eq!(w.end, None);
        assert_eq!(w.start, UnixMillis(0));
    }

    #[test]
    fn validation_and_remaining() {
        let bad = QuotaSpec {
            limit: 0,
            period: QuotaPeriod::Day,
            refill_anchor: None,
        };
        assert!(bad
            .validate("policy.quota")
            .unwrap_err()
            .to_string()
            .starts_with("policy.quota.limit"));
        assert!(time_zone("policy.time_zone", "Mars/Olympus")
            .unwrap_err()
            .to_string()
            .starts_with("policy.time_zone"));
        assert_eq!(
            remaining(
                10,
                QuotaCounter {
                    used: 12,
                    granted: 5
                }
            ),
            3
        );
        assert_eq!(
            remaining(
                10,
                QuotaCounter {
                    used: 20,
                    granted: 0
                }
            ),
            0
        );
    }
}
