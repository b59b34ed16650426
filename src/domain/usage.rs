//! Usage accounting: which endpoint a call counts towards, and the time buckets it is
//! counted in. Pure rules; recording and storage live in `service::usage` and `store`.
//!
//! Endpoints are route templates (`GET /orders/{id}`), never raw paths, so the number of
//! distinct endpoints is bounded by the route table in the configuration: a path no route
//! matches counts as [`OTHER`], a check that names no path as [`NONE`].
use crate::domain::UnixMillis;
use crate::error::{Error, Result};
use serde::Deserialize;

/// The endpoint of a path no route matches.
pub const OTHER: &str = "other";
/// The endpoint of a check that named no path and no route.
pub const NONE: &str = "";

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// Start of the UTC minute holding `t`.
pub fn minute_of(t: UnixMillis) -> UnixMillis {
    UnixMillis(t.0.div_euclid(MINUTE_MS) * MINUTE_MS)
}

/// Start of the UTC day holding `t`.
pub fn day_of(t: UnixMillis) -> UnixMillis {
    UnixMillis(t.0.div_euclid(DAY_MS) * DAY_MS)
}

/// One route of the table, as configured (`[[usage.routes]]`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `GET`, `POST`, … Unset: any method; the endpoint then carries the call's method.
    #[serde(default)]
    pub method: Option<String>,
    /// `/orders/{id}`: `{name}` matches one path segment, a final `{*name}` the rest.
    pub path: String,
    /// The endpoint's name in usage figures. Unset: `<METHOD> <path>`. A caller may name
    /// it directly in `CheckRequest.route`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Methods an endpoint label may carry; any other method counts as `OTHER`, so a client
/// cannot mint endpoints by inventing methods.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

fn method_index(m: &str) -> usize {
    METHODS[..7]
        .iter()
        .position(|k| k.eq_ignore_ascii_case(m))
        .unwrap_or(7)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Debug, Clone)]
struct Route {
    method: Option<usize>,
    segments: Vec<Segment>,
    /// Ends in `{*name}`: matches any further segments (at least one).
    rest: bool,
    /// Endpoint id of this route with method index 0; `+ method` for method-less routes.
    first_id: u32,
}

/// An endpoint, as an index into the table's labels: cheap to hash and copy on the hot
/// path. 0 is [`NONE`], 1 is [`OTHER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

impl EndpointId {
    pub const NONE: EndpointId = EndpointId(0);
    pub const OTHER: EndpointId = EndpointId(1);
}

/// The route table: maps a call's method and path (or its route name) to an endpoint.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    labels: Vec<String>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            routes: Vec::new(),
            labels: vec![NONE.to_owned(), OTHER.to_owned()],
        }
    }
}

/// Most routes a table may hold (each method-less route is 8 endpoints).
pub const MAX_ROUTES: usize = 1000;

impl RouteTable {
    /// Validates and compiles the configured routes; errors name the route by its index.
    pub fn new(config: &[RouteConfig]) -> Result<Self> {
        if config.len() > MAX_ROUTES {
            return Err(Error::invalid(
                "usage.routes",
                format!("at most {MAX_ROUTES} routes"),
            ));
        }
        let mut table = RouteTable::default();
        for (i, rc) in config.iter().enumerate() {
            let field = |f: &str| format!("usage.routes[{i}].{f}");
            let method = match rc.method.as_deref() {
                None => None,
                Some(m) => {
                    let idx = method_index(m);
                    if idx == 7 {
                        return Err(Error::invalid(
                            field("method"),
                            format!("must be one of {}", METHODS[..7].join(", ")),
                        ));
                    }
                    Some(idx)
                }
            };
            if !rc.path.starts_with('/') || rc.path.contains('?') || rc.path.len() > 512 {
                return Err(Error::invalid(
                    field("path"),
                    "must start with '/', have no query string and at most 512 characters",
                ));
            }
            let parts: Vec<&str> = rc.path.split('/').filter(|s| !s.is_empty()).collect();
            let mut segments = Vec::with_capacity(parts.len());
            let mut rest = false;
            for (j, p) in parts.iter().enumerate() {
                if let Some(inner) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    let (name, is_rest) = match inner.strip_prefix('*') {
                        Some(n) => (n, true),
                        None => (inner, false),
                    };
                    if name.is_empty() || name.contains(['{', '}', '*']) {
                        return Err(Error::invalid(
                            field("path"),
                            format!("segment {p:?}: a parameter is {{name}} or {{*name}}"),
                        ));
                    }
                    if is_rest {
                        if j + 1 != parts.len() {
                            return Err(Error::invalid(
                                field("path"),
                                "{*name} may only be the last segment",
                            ));
                        }
                        rest = true;
                    } else {
                        segments.push(Segment::Param);
                    }
                } else if p.contains(['{', '}']) {
                    return Err(Error::invalid(
                        field("path"),
                        format!("segment {p:?}: braces only around a whole segment"),
                    ));
                } else {
                    segments.push(Segment::Literal((*p).to_owned()));
                }
            }
            if let Some(name) = &rc.name {
                if name.is_empty() || name.len() > 128 || name == OTHER {
                    return Err(Error::invalid(
                        field("name"),
                        "must be 1-128 characters and not \"other\"",
                    ));
                }
            }
            let first_id = table.labels.len() as u32;
            match (method, &rc.name) {
                (_, Some(name)) => {
                    let n = if method.is_some() { 1 } else { METHODS.len() };
                    table.labels.extend(std::iter::repeat_n(name.clone(), n));
                }
                (Some(m), None) => table.labels.push(format!("{} {}", METHODS[m], rc.path)),
                (None, None) => table
                    .labels
                    .extend(METHODS.iter().map(|m| format!("{m} {}", rc.path))),
            }
            table.routes.push(Route {
                method,
                segments,
                rest,
                first_id,
            });
        }
        Ok(table)
    }

    /// The endpoint a call counts towards. A `route` name wins when the table knows it
    /// (else the call is `OTHER`); then the first route matching method and path; a call
    /// with neither path nor route is `NONE`.
    pub fn endpoint(
        &self,
        method: Option<&str>,
        path: Option<&str>,
        route: Option<&str>,
    ) -> EndpointId {
        let m = method.filter(|m| !m.is_empty()).map(method_index);
        if let Some(route) = route.filter(|r| !r.is_empty()) {
            return self
                .labels
                .iter()
                .position(|l| l == route)
                .filter(|&i| i > 1)
                .map_or(EndpointId::OTHER, |i| EndpointId(i as u32));
        }
        let Some(path) = path.filter(|p| !p.is_empty()) else {
            return EndpointId::NONE;
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        for r in &self.routes {
            if let (Some(want), Some(got)) = (r.method, m) {
                if want != got {
                    continue;
                }
            } else if r.method.is_some() {
                continue;
            }
            if r.matches(path) {
                let offset = if r.method.is_some() {
                    0
                } else {
                    m.unwrap_or(7)
                };
                return EndpointId(r.first_id + offset as u32);
            }
        }
        EndpointId::OTHER
    }

    /// The endpoint's name as stored and reported.
    pub fn label(&self, id: EndpointId) -> &str {
        self.labels.get(id.0 as usize).map_or(OTHER, String::as_str)
    }
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for seg in &self.segments {
            match (seg, parts.next()) {
                (_, None) => return false,
                (Segment::Param, Some(_)) => {}
                (Segment::Literal(l), Some(p)) if l == p => {}
                _ => return false,
            }
        }
        match parts.next() {
            None => !self.rest,
            Some(_) => self.rest,
        }
    }
}

/// Bucket size of a usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    Day,
    /// One bucket for the whole range, read from day buckets.
    Total,
}

/// A requested `[start, end)`; either end may be open (see [`report_range`]).
pub type Range = (Option<UnixMillis>, Option<UnixMillis>);

/// Longest range a report may cover, per granularity (bounds the points returned).
const MAX_MINUTE_RANGE_MS: i64 = 7 * DAY_MS;
const MAX_DAY_RANGE_MS: i64 = 3660 * DAY_MS;

/// The range a report covers: `[start, end)`, start rounded down to its bucket. Unset end
/// = `now`; unset start = the start of `now`'s day (day, total) or an hour before end.
pub fn report_range(
    g: Granularity,
    start: Option<UnixMillis>,
    end: Option<UnixMillis>,
    now: UnixMillis,
) -> Result<(UnixMillis, UnixMillis)> {
    let end = end.unwrap_or(now);
    let (start, max) = match g {
        Granularity::Minute => (
            minute_of(start.unwrap_or(UnixMillis(end.0 - 3_600_000))),
            MAX_MINUTE_RANGE_MS,
        ),
        Granularity::Day | Granularity::Total => {
            (day_of(start.unwrap_or(day_of(now))), MAX_DAY_RANGE_MS)
        }
    };
    if start >= end {
        return Err(Error::invalid("start_time", "must be before end_time"));
    }
    if end.0 - start.0 > max {
        return Err(Error::invalid(
            "end_time",
            format!(
                "range too long for this granularity (at most {} days)",
                max / DAY_MS
            ),
        ));
    }
    Ok((start, end))
}

/// Counts of checks in one bucket or range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub allowed: u64,
    /// Denied checks by reason code.
    pub denied_by_reason: std::collections::BTreeMap<String, u64>,
    /// Budget spent by allowed checks.
    pub cost: u64,
}

impl Counts {
    fn add(&mut self, reason: &str, count: u64, cost: u64) {
        if reason == "OK" {
            self.allowed += count;
        } else {
            *self.denied_by_reason.entry(reason.to_owned()).or_default() += count;
        }
        self.cost += cost;
    }

    pub fn denied(&self) -> u64 {
        self.denied_by_reason.values().sum()
    }

    pub fn total(&self) -> u64 {
        self.allowed + self.denied()
    }

    /// denied ÷ total; 0 without checks.
    pub fn denial_rate(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            t => self.denied() as f64 / t as f64,
        }
    }
}

/// One point of a usage series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub bucket_start: UnixMillis,
    /// Empty unless grouped by endpoint.
    pub endpoint: String,
    pub counts: Counts,
}

/// A usage report: points oldest first (then by endpoint), and the totals.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub granularity: Granularity,
    pub start: UnixMillis,
    pub end: UnixMillis,
    pub points: Vec<Point>,
    pub totals: Counts,
    /// The reservations made in the range (filled by the service from the store).
    pub reservations: super::reservation::ReservationTotals,
}

/// One stored (bucket, endpoint, reason) sum, as the store returns it.
pub struct StoredCount<'a> {
    pub bucket: UnixMillis,
    pub endpoint: &'a str,
    pub reason: &'a str,
    pub count: u64,
    pub cost: u64,
}

impl Report {
    /// Folds stored sums into points: per bucket (one for `Total`) and, when
    /// `by_endpoint`, per endpoint.
    pub fn build<'a>(
        granularity: Granularity,
        (start, end): (UnixMillis, UnixMillis),
        by_endpoint: bool,
        rows: impl IntoIterator<Item = StoredCount<'a>>,
    ) -> Report {
        let mut points: std::collections::BTreeMap<(UnixMillis, String), Counts> =
            Default::default();
        let mut totals = Counts::default();
        for r in rows {
            let bucket = match granularity {
                Granularity::Total => start,
                _ => r.bucket,
            };
            let endpoint = if by_endpoint { r.endpoint } else { "" };
            points
                .entry((bucket, endpoint.to_owned()))
                .or_default()
                .add(r.reason, r.count, r.cost);
            totals.add(r.reason, r.count, r.cost);
        }
        Report {
            granularity,
            start,
            end,
            points: points
                .into_iter()
                .map(|((bucket_start, endpoint), counts)| Point {
                    bucket_start,
                    endpoint,
                    counts,
                })
                .collect(),
            totals,
            reservations: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Option<&str>, path: &str, name: Option<&str>) -> RouteConfig {
        RouteConfig {
            method: method.map(str::to_owned),
            path: path.into(),
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn paths_map_to_templates_and_unknown_paths_to_other() {
        let t = RouteTable::new(&[
            route(Some("GET"), "/orders/{id}", None),
            route(None, "/orders", None),
            route(None, "/files/{*rest}", Some("files")),
        ])
        .unwrap();
        let label = |m: Option<&str>, p: Option<&str>| t.label(t.endpoint(m, p, None)).to_owned();
        assert_eq!(
            label(Some("get"), Some("/orders/42?x=1")),
            "GET /orders/{id}"
        );
        assert_eq!(label(Some("GET"), Some("/orders/42/")), "GET /orders/{id}");
        assert_eq!(
            label(Some("DELETE"), Some("/orders/42")),
            OTHER,
            "method must match"
        );
        assert_eq!(label(Some("POST"), Some("/orders")), "POST /orders");
        assert_eq!(label(Some("BREW"), Some("/orders")), "OTHER /orders");
        assert_eq!(label(None, Some("/orders")), "OTHER /orders");
        assert_eq!(label(Some("GET"), Some("/files/a/b/c")), "files");
        assert_eq!(
            label(Some("GET"), Some("/files")),
            OTHER,
            "{{*rest}} needs a segment"
        );
        assert_eq!(label(Some("GET"), Some("/orders/42/items")), OTHER);
        assert_eq!(label(Some("GET"), None), NONE);
        // A million distinct paths still make only the table's endpoints.
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            seen.insert(t.endpoint(Some("GET"), Some(&format!("/x/{i}")), None));
            seen.insert(t.endpoint(Some("GET"), Some(&format!("/orders/{i}")), None));
        }
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn a_route_name_counts_only_when_the_table_knows_it() {
        let t = RouteTable::new(&[route(Some("GET"), "/a", Some("list-a"))]).unwrap();
        assert_eq!(t.label(t.endpoint(None, None, Some("list-a"))), "list-a");
        assert_eq!(t.endpoint(None, None, Some("made-up")), EndpointId::OTHER);
        assert_eq!(t.endpoint(None, None, Some("other")), EndpointId::OTHER);
    }

    #[test]
    fn bad_routes_are_named() {
        for (r, field) in [
            (route(Some("BREW"), "/a", None), "usage.routes[0].method"),
            (route(None, "a", None), "usage.routes[0].path"),
            (route(None, "/a/{*x}/b", None), "usage.routes[0].path"),
            (route(None, "/a/x{y}", None), "usage.routes[0].path"),
            (route(None, "/a/{}", None), "usage.routes[0].path"),
            (route(None, "/a", Some("other")), "usage.routes[0].name"),
        ] {
            match RouteTable::new(&[r]) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn reports_fold_rows_into_points_and_totals() {
        let row = |b: i64, e: &'static str, r: &'static str, n: u64| StoredCount {
            bucket: UnixMillis(b),
            endpoint: e,
            reason: r,
            count: n,
            cost: if r == "OK" { n * 2 } else { 0 },
        };
        let rows = || {
            vec![
                row(0, "GET /a", "OK", 5),
                row(0, "GET /b", "OK", 1),
                row(0, "GET /a", "RATE_LIMITED", 2),
                row(DAY_MS, "GET /a", "OK", 3),
            ]
        };
        let r = Report::build(
            Granularity::Day,
            (UnixMillis(0), UnixMillis(2 * DAY_MS)),
            false,
            rows(),
        );
        assert_eq!(r.points.len(), 2);
        assert_eq!(r.points[0].counts.total(), 8);
        assert_eq!(r.totals.allowed, 9);
        assert_eq!(r.totals.denied(), 2);
        assert_eq!(r.totals.cost, 18);
        assert!((r.totals.denial_rate() - 2.0 / 11.0).abs() < 1e-12);
        let by = Report::build(
            Granularity::Total,
            (UnixMillis(0), UnixMillis(2 * DAY_MS)),
            true,
            rows(),
        );
        let eps: Vec<_> = by
            .points
            .iter()
            .map(|p| (p.endpoint.as_str(), p.counts.total()))
            .collect();
        assert_eq!(eps, vec![("GET /a", 10), ("GET /b", 1)]);
    }

    #[test]
    fn report_ranges_round_to_buckets_and_are_bounded() {
        let now = UnixMillis(10 * DAY_MS + 5_000);
        assert_eq!(
            report_range(Granularity::Day, None, None, now).unwrap(),
            (UnixMillis(10 * DAY_MS), now)
        );
        assert_eq!(
            report_range(Granularity::Minute, None, None, now)
                .unwrap()
                .0,
            minute_of(UnixMillis(now.0 - 3_600_000))
        );
        let field = |r: Result<(UnixMillis, UnixMillis)>| match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field(report_range(
                Granularity::Day,
                Some(now),
                Some(UnixMillis(0)),
                now
            )),
            "start_time"
        );
        assert_eq!(
            field(report_range(
                Granularity::Minute,
                Some(UnixMillis(0)),
                None,
                now
            )),
            "end_time"
        );
    }

    #[test]
    fn buckets_are_utc_minutes_and_days() {
        let t = UnixMillis(1_700_000_123_456);
        assert_eq!(minute_of(t).0 % 60_000, 0);
        assert!(t.0 - minute_of(t).0 < 60_000);
        assert_eq!(day_of(t), UnixMillis(1_699_920_000_000));
        assert_eq!(day_of(UnixMillis(-1)), UnixMillis(-86_400_000));
    }
}
