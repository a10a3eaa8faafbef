//! `GET /v1/meters/{slug}/query`: a customer's usage of one meter over a time range, per
//! window (MINUTE, HOUR, DAY, MONTH in an IANA time zone) and per group, the query OpenMeter
//! users know, answered from the rolled-up usage of [`tally_platform::usage`] (never from raw
//! events).
//!
//! Parameters (query string, each validated with its own error code, all 400 unless noted):
//! - `customer` (required; `invalid_customer`): every API token is an operator token, none is
//!   scoped to a customer, so the customer is always named.
//! - `from` (required; `invalid_from`), `to` (default: now, rounded up to a whole minute;
//!   `invalid_to`): RFC 3339 instants, whole minutes (usage is stored per window, and a window
//!   counts in the range its start is in). `from` must start a window of `window_size` in
//!   the time zone; `to` may cut the last window (its `window_end` is then `to`). `to > from`
//!   and at most [`RANGE_DAYS_MAX`] days (`invalid_range`).
//! - `window_size` (`MINUTE`, `HOUR`, `DAY`, `MONTH`; `invalid_window_size`): without it, one
//!   row per group for the whole range. At most [`WINDOWS_MAX`] windows (`too_many_windows`).
//! - `window_time_zone` (IANA name, default `UTC`; `invalid_window_time_zone`): where days,
//!   months (and hours, for zones with a half-hour offset) begin. A DST day has 23 or 25
//!   hours; a day whose midnight does not exist starts at the first minute that does.
//! - `group_by` (repeatable; `invalid_group_by`): the meter's group-by names and `agent`.
//! - `filter_group_<name>=<value>` (repeatable; the same name again means any of the values;
//!   `invalid_filter`): only usage whose group value `<name>` (or `agent`) is one of them.
//! - anything else is `unknown_parameter`; more than [`PARAMS_MAX`] parameters
//!   `too_many_parameters`.
//!
//! The answer: `{meter, aggregation, customer, from, to, window_size, window_time_zone,
//! group_by, data: [{window_start, window_end, customer, group_by: {name: value}, value}]}`,
//! windows that hold usage only, by window then group values; `value` is an exact decimal as
//! a string, folded by the meter's aggregation ([`Totals`]: SUM and COUNT add, MIN and MAX
//! take extremes, LATEST the latest event's value, UNIQUE_COUNT the distinct values across
//! the window's rows, which carry their distinct values). 422 `window_size_too_small` when
//! the stored windows (`aggregator.window_secs`) are coarser than the window asked for, 422
//! `too_many_rows` beyond [`ROWS_MAX`] rows, 422 `quantity_overflow`.
//!
//! What it reads: MINUTE and HOUR read the customer's window partials of the range;
//! DAY, MONTH and the whole range read sealed days as day rows (months folded on the server
//! when every window boundary is a UTC month's start) and the rest as partials; a UTC day a
//! window boundary cuts (a midnight outside UTC) is read per window. Every read is filtered
//! by customer, meter and time range on the tables' sorting keys, so it costs what it asks
//! for, not the store's history.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use chrono_tz::Tz;
use hyper::StatusCode;
use serde::Serialize;
use tally_domain::{CustomerId, Meter};
use tally_platform::http::ErrorCode;
use tally_platform::usage::{self, Plan, Resolution, Scope, Totals, UsageRow};

use super::shared::{error, fail, json, unavailable, ApiState, Reply};

/// The most windows one request may ask for.
pub const WINDOWS_MAX: usize = 10_000;
/// The longest range, in days.
pub const RANGE_DAYS_MAX: i64 = 731;
/// The most rows (window and group) one answer may hold.
pub const ROWS_MAX: usize = 100_000;
/// The most query parameters.
pub const PARAMS_MAX: usize = 64;
/// The longest parameter value, in bytes (a group value is at most 256).
pub const VALUE_MAX_BYTES: usize = 256;

const DAY: i64 = 86_400;

/// The pseudo group-by name of the agent (unless the meter declares a group of that name).
pub const AGENT: &str = "agent";

/// `GET /v1/meters/{slug}/query` with its query string (`None`: none given).
pub(crate) async fn answer(state: &ApiState, slug: &str, query: Option<&str>) -> Reply {
    let meters = match crate::store::registry::meters(&state.db).await {
        Ok(m) => m,
        Err(e) => return unavailable(e),
    };
    let Some(meter) = meters.iter().find(|m| m.slug.as_str() == slug) else {
        return fail(ErrorCode::NotFound, format!("no meter {slug:?}"));
    };
    let query = match parse(query, meter, now_secs()) {
        Ok(q) => q,
        Err(e) => return e.reply(),
    };
    match run(&state.db, meter, &query).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(e) => e.reply(),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A refused query: status, stable code, detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl QueryError {
    fn bad(code: &'static str, detail: impl Into<String>) -> QueryError {
        QueryError {
            status: StatusCode::BAD_REQUEST,
            code,
            detail: detail.into(),
        }
    }

    fn unprocessable(code: &'static str, detail: impl Into<String>) -> QueryError {
        QueryError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            detail: detail.into(),
        }
    }

    fn reply(&self) -> Reply {
        error(self.status, self.code, &self.detail)
    }
}

/// The window sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WindowSize {
    Minute,
    Hour,
    Day,
    Month,
}

impl WindowSize {
    fn parse(text: &str) -> Option<WindowSize> {
        Some(match text.to_ascii_uppercase().as_str() {
            "MINUTE" => WindowSize::Minute,
            "HOUR" => WindowSize::Hour,
            "DAY" => WindowSize::Day,
            "MONTH" => WindowSize::Month,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            WindowSize::Minute => "MINUTE",
            WindowSize::Hour => "HOUR",
            WindowSize::Day => "DAY",
            WindowSize::Month => "MONTH",
        }
    }
}

/// A validated query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub customer: CustomerId,
    /// Unix seconds, a window start.
    pub from: i64,
    /// Unix seconds.
    pub to: i64,
    pub window_size: Option<WindowSize>,
    pub zone: Tz,
    /// Group-by names asked for, in the order given (duplicates dropped).
    pub group_by: Vec<String>,
    /// Name to the accepted values.
    pub filters: BTreeMap<String, BTreeSet<String>>,
    /// Window starts, then the end of the last window as the windows go (at or after `to`).
    pub bounds: Vec<i64>,
    /// Whether `agent` means the row's agent (the meter has no group of that name).
    pub agent_pseudo: bool,
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte); `None`
/// for a malformed escape or bytes that are not UTF-8. (By hand: a few lines, and the
/// workspace's lock file stays as it is.)
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The query string's parameters, decoded; bounded in count and length.
fn params(query: Option<&str>) -> Result<Vec<(String, String)>, QueryError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(Vec::new());
    };
    let pieces: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    if pieces.len() > PARAMS_MAX {
        return Err(QueryError::bad(
            "too_many_parameters",
            format!(
                "{} parameters, at most {PARAMS_MAX} are accepted",
                pieces.len()
            ),
        ));
    }
    pieces
        .into_iter()
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = decode(k).ok_or_else(|| {
                QueryError::bad("invalid_parameter", format!("malformed escape in {p:?}"))
            })?;
            let v = decode(v).ok_or_else(|| {
                QueryError::bad("invalid_parameter", format!("malformed escape in {p:?}"))
            })?;
            if v.len() > VALUE_MAX_BYTES {
                let code = code_of(&k);
                return Err(QueryError::bad(
                    code,
                    format!("{k}: at most {VALUE_MAX_BYTES} bytes"),
                ));
            }
            Ok((k, v))
        })
        .collect()
}

fn code_of(name: &str) -> &'static str {
    match name {
        "customer" => "invalid_customer",
        "from" => "invalid_from",
        "to" => "invalid_to",
        "window_size" => "invalid_window_size",
        "window_time_zone" => "invalid_window_time_zone",
        "group_by" => "invalid_group_by",
        n if n.starts_with("filter_group_") => "invalid_filter",
        _ => "unknown_parameter",
    }
}

/// An RFC 3339 instant of a whole minute, as Unix seconds. A `+` of an offset that arrived
/// unescaped (decoded as a space) is read as `+`.
fn instant(name: &str, text: &str) -> Result<i64, QueryError> {
    let code = code_of(name);
    let t = DateTime::parse_from_rfc3339(text)
        .or_else(|e| {
            if text.contains(' ') {
                DateTime::parse_from_rfc3339(&text.replace(' ', "+"))
            } else {
                Err(e)
            }
        })
        .map_err(|e| {
            QueryError::bad(
                code,
                format!("{name} {text:?} is not an RFC 3339 time ({e}); escape + as %2B"),
            )
        })?;
    let secs = t.timestamp();
    if t.timestamp_subsec_nanos() != 0 || secs.rem_euclid(60) != 0 {
        return Err(QueryError::bad(
            code,
            format!("{name} {text:?} must be a whole minute (usage is stored per window)"),
        ));
    }
    if !(0..=i64::from(u32::MAX)).contains(&secs) {
        return Err(QueryError::bad(
            code,
            format!("{name} {text:?} is outside 1970-01-01 to 2106-02-07"),
        ));
    }
    Ok(secs)
}

/// Validates the parameters of a query of `meter` (see the module docs); `now` (Unix
/// seconds) is the default `to`. The parameters are checked in the order given, then the
/// customer, `from`, `to`, `window_size`, `window_time_zone`, the range and the windows: the
/// first problem is the answer.
pub fn parse(query: Option<&str>, meter: &Meter, now: i64) -> Result<Query, QueryError> {
    let groups = Groups::of(meter);
    let given = Given::read(query, &groups)?;
    let customer = given.customer()?;
    let from = given.from()?;
    let to = given.to(now)?;
    let window_size = given.window_size()?;
    let zone = given.zone()?;
    if to <= from {
        return Err(QueryError::bad("invalid_range", "to must be after from"));
    }
    if to - from > RANGE_DAYS_MAX * DAY {
        return Err(QueryError::bad(
            "invalid_range",
            format!("at most {RANGE_DAYS_MAX} days from from to to"),
        ));
    }
    let bounds = match window_size {
        None => vec![from, to],
        Some(size) => window_bounds(from, to, size, zone)?,
    };
    Ok(Query {
        customer,
        from,
        to,
        window_size,
        zone,
        group_by: given.group_by,
        filters: given.filters,
        bounds,
        agent_pseudo: groups.agent_pseudo,
    })
}

/// The group names a query of a meter may use: the meter's group-by names, and [`AGENT`]
/// (the row's agent, unless the meter declares a group of that name).
struct Groups<'m> {
    meter: &'m Meter,
    names: Vec<&'m str>,
    agent_pseudo: bool,
}

impl<'m> Groups<'m> {
    fn of(meter: &'m Meter) -> Groups<'m> {
        let names: Vec<&str> = meter.group_by.iter().map(|(n, _)| n.as_str()).collect();
        let agent_pseudo = !names.contains(&AGENT);
        Groups {
            meter,
            names,
            agent_pseudo,
        }
    }

    fn known(&self, name: &str) -> bool {
        self.names.contains(&name) || name == AGENT
    }

    /// The names, for a refusal.
    fn listed(&self) -> String {
        let mut all = self.names.clone();
        if self.agent_pseudo {
            all.push(AGENT);
        }
        all.join(", ")
    }
}

/// The parameters as given: the single-valued ones by name, the group-by names in order
/// (duplicates dropped), the filters by group name.
struct Given {
    single: BTreeMap<&'static str, String>,
    group_by: Vec<String>,
    filters: BTreeMap<String, BTreeSet<String>>,
}

impl Given {
    /// Reads the parameters in order; the first unknown, repeated or misnamed one refuses.
    fn read(query: Option<&str>, groups: &Groups<'_>) -> Result<Given, QueryError> {
        let mut given = Given {
            single: BTreeMap::new(),
            group_by: Vec::new(),
            filters: BTreeMap::new(),
        };
        for (k, v) in params(query)? {
            match k.as_str() {
                "customer" | "from" | "to" | "window_size" | "window_time_zone" => {
                    given.single_once(&k, v)?;
                }
                "group_by" => given.add_group_by(groups, v)?,
                _ => given.add_filter(groups, &k, v)?,
            }
        }
        Ok(given)
    }

    fn single_once(&mut self, k: &str, v: String) -> Result<(), QueryError> {
        let name: &'static str = match k {
            "customer" => "customer",
            "from" => "from",
            "to" => "to",
            "window_size" => "window_size",
            _ => "window_time_zone",
        };
        if self.single.insert(name, v).is_some() {
            return Err(QueryError::bad(
                code_of(name),
                format!("{name} is given more than once"),
            ));
        }
        Ok(())
    }

    fn add_group_by(&mut self, groups: &Groups<'_>, v: String) -> Result<(), QueryError> {
        if !groups.known(&v) {
            return Err(QueryError::bad(
                "invalid_group_by",
                format!(
                    "meter {} has no group {v:?}; group_by takes: {}",
                    groups.meter.slug,
                    groups.listed()
                ),
            ));
        }
        if !self.group_by.contains(&v) {
            self.group_by.push(v);
        }
        Ok(())
    }

    fn add_filter(&mut self, groups: &Groups<'_>, k: &str, v: String) -> Result<(), QueryError> {
        let Some(name) = k.strip_prefix("filter_group_") else {
            return Err(QueryError::bad(
                "unknown_parameter",
                format!(
                    "unknown parameter {:?}; parameters: customer, from, to, window_size, \
                     window_time_zone, group_by, filter_group_<name>",
                    k.chars().take(64).collect::<String>()
                ),
            ));
        };
        if !groups.known(name) {
            return Err(QueryError::bad(
                "invalid_filter",
                format!(
                    "meter {} has no group {name:?}; filter_group_<name> takes: {}",
                    groups.meter.slug,
                    groups.listed()
                ),
            ));
        }
        self.filters.entry(name.to_owned()).or_default().insert(v);
        Ok(())
    }

    fn customer(&self) -> Result<CustomerId, QueryError> {
        match self.single.get("customer") {
            None => Err(QueryError::bad(
                "invalid_customer",
                "customer is required: API tokens are not scoped to a customer",
            )),
            Some(c) => CustomerId::new(c.clone())
                .map_err(|e| QueryError::bad("invalid_customer", e.to_string())),
        }
    }

    fn from(&self) -> Result<i64, QueryError> {
        match self.single.get("from") {
            None => Err(QueryError::bad("invalid_from", "from is required")),
            Some(t) => instant("from", t),
        }
    }

    /// `to`, or `now` rounded up to a whole minute.
    fn to(&self, now: i64) -> Result<i64, QueryError> {
        match self.single.get("to") {
            Some(t) => instant("to", t),
            None => Ok((now + 59).div_euclid(60) * 60),
        }
    }

    fn window_size(&self) -> Result<Option<WindowSize>, QueryError> {
        let Some(w) = self.single.get("window_size") else {
            return Ok(None);
        };
        WindowSize::parse(w).map(Some).ok_or_else(|| {
            QueryError::bad(
                "invalid_window_size",
                format!("window_size {w:?}: one of MINUTE, HOUR, DAY, MONTH"),
            )
        })
    }

    fn zone(&self) -> Result<Tz, QueryError> {
        let Some(z) = self.single.get("window_time_zone") else {
            return Ok(Tz::UTC);
        };
        z.parse::<Tz>().map_err(|_| {
            QueryError::bad(
                "invalid_window_time_zone",
                format!("window_time_zone {z:?} is not an IANA time zone (Europe/Berlin, UTC)"),
            )
        })
    }
}

/// The window starts of `[from, to)` in windows of `size` in `zone`, then the end of the
/// last; `from` must start a window, and there are at most [`WINDOWS_MAX`].
fn window_bounds(from: i64, to: i64, size: WindowSize, zone: Tz) -> Result<Vec<i64>, QueryError> {
    if !is_start(from, size, zone) {
        return Err(QueryError::bad(
            "invalid_from",
            format!(
                "from must start a {} window in {} (the next one starts at {})",
                size.name(),
                zone.name(),
                rfc3339(next_start(from, size, zone), zone)
            ),
        ));
    }
    windows(from, to, size, zone).ok_or_else(|| {
        QueryError::bad(
            "too_many_windows",
            format!(
                "more than {WINDOWS_MAX} {} windows: narrow the range or widen the window",
                size.name()
            ),
        )
    })
}

/// The local wall-clock time of `t` in `zone`.
fn local(t: i64, zone: Tz) -> NaiveDateTime {
    DateTime::from_timestamp(t, 0)
        .map(|u| u.with_timezone(&zone).naive_local())
        .unwrap_or_default()
}

/// The first instant at or after the wall-clock time `wall` in `zone` (the earlier of two in
/// a repeated hour; the first that exists after a gap).
fn first_instant(wall: NaiveDateTime, zone: Tz) -> i64 {
    let mut w = wall;
    for _ in 0..(26 * 60) {
        if let Some(t) = zone.from_local_datetime(&w).earliest() {
            return t.timestamp();
        }
        w += chrono::Duration::minutes(1);
    }
    wall.and_utc().timestamp()
}

fn start_of_day(date: NaiveDate, zone: Tz) -> i64 {
    first_instant(date.and_hms_opt(0, 0, 0).unwrap_or_default(), zone)
}

/// Whether `t` starts a window of `size` in `zone`.
pub fn is_start(t: i64, size: WindowSize, zone: Tz) -> bool {
    let l = local(t, zone);
    match size {
        WindowSize::Minute => l.second() == 0,
        WindowSize::Hour => l.second() == 0 && l.minute() == 0,
        WindowSize::Day => start_of_day(l.date(), zone) == t,
        WindowSize::Month => start_of_day(l.date().with_day(1).unwrap_or_default(), zone) == t,
    }
}

/// The start of the window after the one containing `t`.
pub fn next_start(t: i64, size: WindowSize, zone: Tz) -> i64 {
    let l = local(t, zone);
    match size {
        WindowSize::Minute => t - i64::from(l.second()) + 60,
        WindowSize::Hour => {
            // the next :00 if the offset holds; otherwise minute by minute (an offset change
            // of a half hour inside the hour)
            let guess = t + 3600 - i64::from(l.minute() * 60 + l.second());
            let g = local(guess, zone);
            if g.minute() == 0 && g.second() == 0 && guess > t {
                return guess;
            }
            let mut c = t - i64::from(l.second()) + 60;
            for _ in 0..240 {
                let cl = local(c, zone);
                if cl.minute() == 0 {
                    return c;
                }
                c += 60;
            }
            guess
        }
        WindowSize::Day => {
            let next = l.date().checked_add_days(Days::new(1)).unwrap_or(l.date());
            start_of_day(next, zone)
        }
        WindowSize::Month => {
            let first = l.date().with_day(1).unwrap_or(l.date());
            let next = first.checked_add_months(Months::new(1)).unwrap_or(first);
            start_of_day(next, zone)
        }
    }
}

/// The window starts from `from` (a start) up to `to`, then the end of the last window (at
/// or after `to`); `None` beyond [`WINDOWS_MAX`] windows.
pub fn windows(from: i64, to: i64, size: WindowSize, zone: Tz) -> Option<Vec<i64>> {
    let mut bounds = vec![from];
    let mut t = from;
    while t < to {
        if bounds.len() > WINDOWS_MAX {
            return None;
        }
        let next = next_start(t, size, zone);
        if next <= t {
            return None;
        }
        bounds.push(next);
        t = next;
    }
    Some(bounds)
}

fn rfc3339(t: i64, zone: Tz) -> String {
    DateTime::from_timestamp(t, 0)
        .map(|u| {
            u.with_timezone(&zone)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_default()
}

/// The read a query makes: its resolution, the UTC days read per window, and whether sealed
/// days may be folded per UTC calendar month on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadShape {
    pub resolution: Resolution,
    pub split_days: Vec<u32>,
    pub by_month: bool,
}

/// How `q` is read (see the module docs).
pub fn shape(q: &Query) -> ReadShape {
    if matches!(q.window_size, Some(WindowSize::Minute | WindowSize::Hour)) {
        return ReadShape {
            resolution: Resolution::Windows,
            split_days: Vec::new(),
            by_month: false,
        };
    }
    // a UTC day a window boundary cuts is read per window (the range's own edges are
    // read per window by `usage::read_sql` anyway)
    let mut split: Vec<u32> = q
        .bounds
        .iter()
        .filter(|b| b.rem_euclid(DAY) != 0 && **b < q.to)
        .filter_map(|b| u32::try_from(b - b.rem_euclid(DAY)).ok())
        .collect();
    split.sort_unstable();
    split.dedup();
    // sealed days folded per UTC month only when no boundary inside the range falls within a
    // UTC month
    let inner = &q.bounds[1..q.bounds.len().saturating_sub(1).max(1)];
    let by_month = inner.iter().all(|b| {
        DateTime::from_timestamp(*b, 0)
            .is_some_and(|u| u.day() == 1 && u.num_seconds_from_midnight() == 0)
    });
    ReadShape {
        resolution: Resolution::Days,
        split_days: split,
        by_month,
    }
}

/// One row of the answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub window_start: String,
    pub window_end: String,
    pub customer: String,
    pub group_by: BTreeMap<String, String>,
    pub value: String,
}

/// The answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Answer {
    pub meter: String,
    pub aggregation: &'static str,
    pub customer: String,
    pub from: String,
    pub to: String,
    pub window_size: Option<WindowSize>,
    pub window_time_zone: String,
    pub group_by: Vec<String>,
    pub data: Vec<Row>,
}

/// Usage rows folded into the query's windows and groups.
pub struct Fold<'a> {
    q: &'a Query,
    buckets: BTreeMap<(usize, Vec<String>), Totals>,
}

impl<'a> Fold<'a> {
    pub fn new(q: &'a Query) -> Fold<'a> {
        Fold {
            q,
            buckets: BTreeMap::new(),
        }
    }

    fn value_of<'r>(&self, row: &'r UsageRow, name: &str) -> &'r str {
        if name == AGENT && self.q.agent_pseudo {
            return &row.agent;
        }
        row.group_names
            .iter()
            .position(|n| n == name)
            .and_then(|i| row.group_values.get(i))
            .map_or("", String::as_str)
    }

    /// Adds one row read (rows of other customers or outside the range are ignored).
    pub fn add(&mut self, row: &UsageRow) -> Result<(), QueryError> {
        let (start, end) = (i64::from(row.start), i64::from(row.end));
        if row.customer != self.q.customer.as_str() || start < self.q.from || start >= self.q.to {
            return Ok(());
        }
        for (name, values) in &self.q.filters {
            if !values.contains(self.value_of(row, name)) {
                return Ok(());
            }
        }
        let b = &self.q.bounds;
        let i = b.partition_point(|x| *x <= start) - 1;
        let window_end = b.get(i + 1).copied().unwrap_or(self.q.to);
        if end > window_end && self.q.window_size.is_some() {
            return Err(QueryError::unprocessable(
                "window_size_too_small",
                format!(
                    "usage is stored in windows of {} s, coarser than the {} windows asked for",
                    end - start,
                    self.q.window_size.map_or("", WindowSize::name)
                ),
            ));
        }
        let key: Vec<String> = self
            .q
            .group_by
            .iter()
            .map(|n| self.value_of(row, n).to_owned())
            .collect();
        let full = self.buckets.len() >= ROWS_MAX;
        let totals = match self.buckets.entry((i, key)) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(_) if full => {
                return Err(QueryError::unprocessable(
                    "too_many_rows",
                    format!(
                        "more than {ROWS_MAX} rows: narrow the range, widen the window or group by less"
                    ),
                ))
            }
            std::collections::btree_map::Entry::Vacant(v) => v.insert(Totals::default()),
        };
        totals.add(row).ok_or_else(overflow)
    }

    /// The answer's rows, by window then group values.
    pub fn rows(&self, aggregation: &str) -> Result<Vec<Row>, QueryError> {
        let q = self.q;
        self.buckets
            .iter()
            .map(|((i, values), totals)| {
                let value = totals.quantity(aggregation).ok_or_else(overflow)?;
                let end = q.bounds.get(i + 1).copied().unwrap_or(q.to).min(q.to);
                Ok(Row {
                    window_start: rfc3339(q.bounds[*i], q.zone),
                    window_end: rfc3339(end, q.zone),
                    customer: q.customer.to_string(),
                    group_by: q.group_by.iter().cloned().zip(values.clone()).collect(),
                    value: value.normalize().to_string(),
                })
            })
            .collect()
    }
}

fn overflow() -> QueryError {
    QueryError::unprocessable(
        "quantity_overflow",
        "a quantity is too large to represent exactly",
    )
}

fn secs(t: i64) -> u32 {
    u32::try_from(t.max(0)).unwrap_or(u32::MAX)
}

/// Reads and folds the usage `q` asks for.
pub async fn run(db: &clickhouse::Client, meter: &Meter, q: &Query) -> Result<Answer, QueryError> {
    let unavailable = |e: clickhouse::error::Error| QueryError {
        status: ErrorCode::Unavailable.status(),
        code: ErrorCode::Unavailable.as_str(),
        detail: e.to_string(),
    };
    let shape = shape(q);
    let plan = match shape.resolution {
        Resolution::Days => usage::plan(db, secs(q.from)).await.map_err(unavailable)?,
        Resolution::Windows => Plan::default(),
    };
    let split: Vec<(String, u32)> = shape
        .split_days
        .iter()
        .map(|d| (q.customer.to_string(), *d))
        .collect();
    let no_one: [String; 0] = [];
    let by_agent =
        q.agent_pseudo && (q.group_by.iter().any(|g| g == AGENT) || q.filters.contains_key(AGENT));
    let req = usage::Request {
        from: secs(q.from),
        to: secs(q.to),
        scope: Scope::Customer(q.customer.as_str()),
        meter: Some(meter.slug.as_str()),
        by_agent,
        resolution: shape.resolution,
        split: &split,
        months_except: shape.by_month.then_some(&no_one[..]),
        through: None,
    };
    let started = std::time::Instant::now();
    let mut fold = Fold::new(q);
    let mut cursor = db
        .query(&usage::read_sql(&plan, &req))
        .fetch::<UsageRow>()
        .map_err(unavailable)?;
    let mut rows = 0u64;
    while let Some(row) = cursor.next().await.map_err(unavailable)? {
        fold.add(&row)?;
        rows += 1;
    }
    tracing::debug!(meter = %meter.slug, customer = %q.customer, rows,
        elapsed_ms = started.elapsed().as_millis() as u64, "usage query");
    let aggregation = meter.aggregation.as_str();
    Ok(Answer {
        meter: meter.slug.to_string(),
        aggregation,
        customer: q.customer.to_string(),
        from: rfc3339(q.from, q.zone),
        to: rfc3339(q.to, q.zone),
        window_size: q.window_size,
        window_time_zone: q.zone.name().to_owned(),
        group_by: q.group_by.clone(),
        data: fold.rows(aggregation)?,
    })
}

#[cfg(test)]
mod tests;

/// Property tests of the query parser (issue 16: it faces every API caller): no query string
/// makes it panic, and whatever it accepts has windows the reader can rely on.
#[cfg(test)]
mod properties;
