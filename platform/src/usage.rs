//! Reading committed usage for a time range, at a cost that follows the range, not history.
//!
//! The aggregator writes per-window partials under batch ids (`usage_partials`; a batch
//! counts unless its id is in `usage_aborts`) and seals each partition's days that can no
//! longer change into `usage_days` (a seal counts once its row is in `usage_seals`). A read:
//! 1. [`plan`]: one small query for how far each partition is sealed (`usage_seals`, bounded
//!    by the range, plus one registration row per partition);
//! 2. [`read`]: one query with those bounds as constants: sealed days of the range from
//!    `usage_days`, everything else from the partials, each filtered on its table's sorting
//!    key (hour, then customer), folded server-side per (customer, [agent,] meter, group) and
//!    UTC day, or window where a day is cut (a split day, the range's first or last day);
//!    optionally sealed days per UTC calendar month for customers billed by calendar month;
//!    plus the corrections of the range (voided events: `usage_correction_deltas`), which
//!    apply to sealed and unsealed days alike.
//!
//! Because the bounds are constants of the second query, both halves agree on where the
//! sealed part ends, whatever is sealed meanwhile (a day sealed after the plan is read from
//! its partials, which a seal never changes). `split` days are read at window resolution even
//! when sealed: a billing period or subscription change that starts inside a UTC day (a
//! customer's midnight in Tokyo, a plan change at 10:37) is cut exactly at its window.
//!
//! Quantities come back as raw `Decimal(38, 9)` units ([`Units`]), never failing the read:
//! a value too large for the caller is that caller's (and that customer's) problem. This
//! module owns no business rule: it does not know periods, plans or prices.

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

const DAY: u32 = 86_400;

/// A `Decimal(38, 9)` column as read: units of 10^-9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Units(pub i128);

impl UsageRow {
    /// The row's quantity under its aggregation (`None`: an unknown aggregation, or a value
    /// too large to represent). UNIQUE_COUNT: the row's distinct values.
    pub fn quantity(&self) -> Option<Decimal> {
        match self.aggregation.as_str() {
            "SUM" => self.sum.decimal(),
            "COUNT" => Some(Decimal::from(self.events)),
            "MIN" => self.min.decimal(),
            "MAX" => self.max.decimal(),
            "LATEST" => self.latest.decimal(),
            "UNIQUE_COUNT" => Some(Decimal::from(self.unique_values.len())),
            _ => None,
        }
    }
}

/// Rows of one key merged by their aggregation, exactly: counts and sums add, MIN and MAX
/// take the extremes, LATEST the value of the greatest (event time, event id), UNIQUE_COUNT
/// counts each distinct value once.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub events: u64,
    sum: Decimal,
    min: Option<Decimal>,
    max: Option<Decimal>,
    latest: Option<(i64, String, Decimal)>,
    unique: std::collections::HashSet<String>,
}

impl Totals {
    /// Adds a row; `None` (and the totals unusable) when a value or the sum is too large to
    /// represent exactly.
    pub fn add(&mut self, row: &UsageRow) -> Option<()> {
        let (sum, min, max, latest) = (
            row.sum.decimal()?,
            row.min.decimal()?,
            row.max.decimal()?,
            row.latest.decimal()?,
        );
        // both checked before either changes: a failed add leaves the totals as they were
        let (events, total) = (
            self.events.checked_add(row.events)?,
            self.sum.checked_add(sum)?,
        );
        self.events = events;
        self.sum = total;
        self.min = Some(self.min.map_or(min, |m| m.min(min)));
        self.max = Some(self.max.map_or(max, |m| m.max(max)));
        let key = (row.latest_time_ms, row.latest_event_id.as_str());
        if self
            .latest
            .as_ref()
            .is_none_or(|(t, id, _)| key > (*t, id.as_str()))
        {
            self.latest = Some((row.latest_time_ms, row.latest_event_id.clone(), latest));
        }
        self.unique.extend(row.unique_values.iter().cloned());
        Some(())
    }

    /// Adds everything `other` holds (as if its rows had been added here); `None` (and the
    /// totals unchanged) when the sum would overflow.
    pub fn merge(&mut self, other: &Totals) -> Option<()> {
        let (events, sum) = (
            self.events.checked_add(other.events)?,
            self.sum.checked_add(other.sum)?,
        );
        self.events = events;
        self.sum = sum;
        if let Some(m) = other.min {
            self.min = Some(self.min.map_or(m, |x| x.min(m)));
        }
        if let Some(m) = other.max {
            self.max = Some(self.max.map_or(m, |x| x.max(m)));
        }
        if let Some((t, id, v)) = &other.latest {
            if self
                .latest
                .as_ref()
                .is_none_or(|(st, sid, _)| (*t, id.as_str()) > (*st, sid.as_str()))
            {
                self.latest = Some((*t, id.clone(), *v));
            }
        }
        self.unique.extend(other.unique.iter().cloned());
        Some(())
    }

    /// The quantity under `aggregation` (`SUM`, `COUNT`, ...); `None` for an unknown name.
    pub fn quantity(&self, aggregation: &str) -> Option<Decimal> {
        Some(match aggregation {
            "SUM" => self.sum,
            "COUNT" => Decimal::from(self.events),
            "MIN" => self.min.unwrap_or_default(),
            "MAX" => self.max.unwrap_or_default(),
            "LATEST" => self.latest.as_ref().map_or(Decimal::ZERO, |l| l.2),
            "UNIQUE_COUNT" => Decimal::from(self.unique.len()),
            _ => return None,
        })
    }
}

impl Units {
    /// The decimal, if it fits rust_decimal with 9 places (|x| < 7.9 * 10^19).
    pub fn decimal(self) -> Option<Decimal> {
        crate::store::dec9::from_units(self.0)
    }
}

/// How far each partition is sealed, for one read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (partition, start of the newest sealed day at or after the range start; 0 when none).
    pub sealed: Vec<(u32, u32)>,
    /// The seals (ids) of those days: the only day rows the read takes, so it reads exactly
    /// the seals the plan saw, whatever is sealed or aborted meanwhile.
    pub seals: Vec<String>,
}

impl Plan {
    /// The time (seconds) from which the partials must be read: the earliest unsealed day
    /// of any partition, never before `from`.
    fn partials_from(&self, from: u32) -> u32 {
        self.sealed
            .iter()
            .map(|&(_, through)| if through == 0 { from } else { through + DAY })
            .min()
            .unwrap_or(from)
            .max(from)
    }
}

/// Reads the sealing state that a read of `[from, ...)` needs.
pub async fn plan(db: &Client, from: u32) -> Result<Plan, clickhouse::error::Error> {
    // day 0 rows register a partition (written at its first takeover), so a partition
    // without any seal in the range is known and read from its partials
    let rows: Vec<(u32, u32, String)> = db
        .query(
            "SELECT part, toUInt32(toUInt32(day) * 86400), seal_id FROM usage_seals \
             WHERE (day >= toDate(intDiv(?, 86400)) OR day = toDate(0)) \
             AND seal_id NOT IN (SELECT batch_id FROM usage_aborts) \
             ORDER BY part, day",
        )
        .bind(from)
        .fetch_all()
        .await?;
    let mut plan = Plan::default();
    for (part, day, seal_id) in rows {
        match plan.sealed.last_mut() {
            Some((p, through)) if *p == part => *through = (*through).max(day),
            _ => plan.sealed.push((part, day)),
        }
        if day > 0 {
            plan.seals.push(seal_id);
        }
    }
    Ok(plan)
}

/// Which customers a read covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Customer(&'a str),
    /// These customers only (`customer IN (...)` in the query text: keep the list short,
    /// a caller with many customers reads them in chunks). An empty list reads nothing.
    Customers(&'a [String]),
}

impl Scope<'_> {
    /// ` AND customer ...` for this scope (empty for [`Scope::All`]).
    fn sql(&self) -> String {
        match self {
            Scope::All => String::new(),
            Scope::Customer(c) => format!(" AND customer = {}", quote(c)),
            Scope::Customers([]) => " AND 0".to_owned(),
            Scope::Customers(list) => {
                let quoted: Vec<String> = list.iter().map(|c| quote(c)).collect();
                format!(" AND customer IN ({})", quoted.join(", "))
            }
        }
    }
}

/// What a read returns per row: the source's resolution (a sealed day, or a window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Sealed days as day rows, the rest as window rows.
    Days,
    /// Window rows only (the partials, sealed or not).
    Windows,
}

/// One read.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub from: u32,
    pub to: u32,
    pub scope: Scope<'a>,
    /// Only this meter (`None`: every meter).
    pub meter: Option<&'a str>,
    /// Keep agents apart (`false`: `agent` is empty and agents are summed).
    pub by_agent: bool,
    pub resolution: Resolution,
    /// (customer, day start) read at window resolution even when sealed.
    pub split: &'a [(String, u32)],
    /// [`Resolution::Days`]: sealed days folded per UTC calendar month on the server, for
    /// every customer but these (whose billing changes at other instants: other cycles, time
    /// zones, subscription changes), who get a row per day. `None`: a row per day for all.
    pub months_except: Option<&'a [String]>,
    /// Only this partition, and of its partials only the batches up to a sequence: what a
    /// spend decider reads from storage before it joins the live feed (`feed::join_point`).
    /// `None`: every partition, every batch.
    pub through: Option<Through>,
}

/// One partition's usage up to a batch sequence ([`Request::through`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Through {
    pub part: u32,
    /// The largest `bseq` of the partials read.
    pub bseq_max: u64,
}

/// Usage of one (customer, [agent,] meter, group) over `[start, end)`: a sealed day or a
/// window.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub struct UsageRow {
    pub customer: String,
    pub agent: String,
    pub meter: String,
    pub aggregation: String,
    pub group_key: String,
    pub group_names: Vec<String>,
    pub group_values: Vec<String>,
    pub start: u32,
    pub end: u32,
    pub events: u64,
    pub sum: Units,
    pub min: Units,
    pub max: Units,
    pub latest: Units,
    pub latest_time_ms: i64,
    pub latest_event_id: String,
    /// UNIQUE_COUNT meters: the distinct values; empty otherwise.
    pub unique_values: Vec<String>,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `(customer, day) IN (...)` for the split days, or `0`.
fn split_sql(split: &[(String, u32)], day_expr: &str) -> String {
    if split.is_empty() {
        return "0".into();
    }
    let tuples: Vec<String> = split
        .iter()
        .map(|(c, d)| format!("({}, {})", quote(c), d - d % DAY))
        .collect();
    format!("(customer, {day_expr}) IN ({})", tuples.join(", "))
}

/// `transform(part, [parts], [first unsealed second], 0)`: where each partition's unsealed
/// time starts (0: nothing sealed).
fn unsealed_sql(plan: &Plan) -> String {
    if plan.sealed.is_empty() {
        return "toUInt32(0)".into();
    }
    let parts: Vec<String> = plan.sealed.iter().map(|(p, _)| p.to_string()).collect();
    let starts: Vec<String> = plan
        .sealed
        .iter()
        .map(|&(_, t)| {
            if t == 0 {
                "0".into()
            } else {
                (t + DAY).to_string()
            }
        })
        .collect();
    format!(
        "transform(part, [{}], [{}], toUInt32(0))",
        parts.join(","),
        starts.join(",")
    )
}

/// The latest-event and distinct-value columns of rows of meters that read neither.
const NO_LATEST: &str = "toDecimal128(0, 9), toInt64(0), '', emptyArrayString()";

/// The plan's seal ids as an SQL list (`''` when none: matches no seal).
fn seal_list(plan: &Plan) -> String {
    if plan.seals.is_empty() {
        return "''".into();
    }
    let quoted: Vec<String> = plan.seals.iter().map(|s| quote(s)).collect();
    quoted.join(", ")
}

/// A filter on `col` (a DateTime whose sorting-key column is `toStartOfHour(col)`) to
/// `[from, to)`, written so the primary index applies on any server.
fn range_sql(col: &str, from: u32, to: u32) -> String {
    format!(
        "(toStartOfHour({col}) >= toStartOfHour(toDateTime({from})) AND {col} >= toDateTime({from}) \
         AND toStartOfHour({col}) <= toStartOfHour(toDateTime({to})) AND {col} < toDateTime({to}))"
    )
}

/// ` UNION ALL` the corrections of the range (`usage_correction_deltas`, migration 0060), at
/// window resolution, or nothing for a read [`Request::through`] a batch (the live spend
/// decider's, which corrections do not reach: docs/INGEST.md "Corrections").
///
/// A correction's deltas count when they are of the content that counts for its id and it is
/// the winner of its revision of the event ([`counted_deltas_sql`]; races between two API
/// instances resolve the same way for every reader), each delta once however often its rows
/// were written (`LIMIT 1 BY`, per customer: a correction id is a customer's, and two
/// customers' corrections of the same id and window are two corrections). Only SUM meters are corrected and only SUM and COUNT meters
/// are backfilled (the API refuses the others), so a row carries its delta as the sum and its
/// events (a backfilled event adds one; a void's minus one never takes a row below zero), no
/// minimum or maximum.
fn corrections_sql(req: &Request<'_>, from: u32, to: u32) -> String {
    if req.through.is_some() {
        return String::new();
    }
    let agent = if req.by_agent { "agent" } else { "''" };
    let customer = req.scope.sql();
    let meter = req
        .meter
        .map(|m| format!(" AND meter = {}", quote(m)))
        .unwrap_or_default();
    format!(
        " UNION ALL SELECT customer, {agent} AS a, meter, aggregation, group_key, any(group_names), \
            any(group_values), toUInt32(window_start) AS s, \
            toUInt32(max(toUInt32(window_start) + window_secs)), \
            toUInt64(greatest(sum(events), 0)), sum(value), \
            toDecimal128(0, 9), toDecimal128(0, 9), {NO_LATEST} \
         FROM (SELECT customer, agent, meter, aggregation, group_key, group_names, group_values, \
                  window_start, window_secs, events, value \
               FROM usage_correction_deltas \
               WHERE {range}{customer}{meter} AND aggregation IN ('SUM', 'COUNT') \
                 AND {counted} \
               LIMIT 1 BY customer, correction_id, meter, group_key, window_start) \
         GROUP BY customer, a, meter, aggregation, group_key, s",
        range = range_sql("window_start", from, to),
        counted = counted_deltas_sql(&customer),
    )
}

/// The condition on `usage_correction_deltas` rows that count (issue 17; docs/INGEST.md,
/// "Corrections"), reading only the corrections `filter` selects (` AND customer = ?`, with
/// whatever it binds, or empty for every customer). Two steps, both over the stored rows
/// only, so every reader, instance and restart agrees:
/// 1. per (customer, correction id), one content counts: the row stored with the earliest
///    `created_ms`, ties broken by the smaller content `digest`, then the smaller revision (two
///    API instances racing with the same new id and different content may both store theirs;
///    the loser never counts, whichever event it names);
/// 2. of those, per revision of an event, the smallest correction id (two ids racing on one
///    event).
///
/// A delta counts when it carries the winner's (customer, correction id, event, revision,
/// digest): the leftovers of a failed attempt (another revision), the deltas of a losing
/// content (another digest) and, for rows written before migration 0064 (digest '' on both
/// sides, so contents cannot be told apart), the deltas of an id's other event never do. The first step is an `ORDER BY` then `LIMIT 1 BY` (on ClickHouse 18.16 about twice
/// the time of the one `GROUP BY` it replaces over two million corrections, where `argMin`
/// over tuples took five times); the corrections of a customer are read whole (the table is
/// sorted by customer).
pub fn counted_deltas_sql(filter: &str) -> String {
    format!(
        "(customer, correction_id, agent, event_id, revision, digest) IN \
         (SELECT customer, min(correction_id), agent, event_id, revision, \
                 argMin(digest, correction_id) \
          FROM (SELECT customer, correction_id, agent, event_id, revision, digest \
                FROM usage_corrections WHERE 1{filter} \
                ORDER BY created_ms, digest, revision LIMIT 1 BY customer, correction_id) \
          GROUP BY customer, agent, event_id, revision)"
    )
}

/// The SQL of a read (exposed for the tests that run it on both engines).
///
/// Per (partition, customer, day), exactly one source: a day row when the day is sealed,
/// wholly inside the range and not split; the day's partials otherwise. (A sealed day's
/// partials never change, so both sources hold the same usage.)
pub fn read_sql(plan: &Plan, req: &Request<'_>) -> String {
    let (from, to) = (req.from, req.to.max(req.from));
    let read = Fragments::of(req);
    let corrections = corrections_sql(req, from, to);
    if req.resolution == Resolution::Windows {
        return format!(
            "{}{corrections}",
            read.partials(&range_sql("window_start", from, to), "1")
        );
    }
    // the whole days inside the range
    let (first_day, end_day) = (from.div_ceil(DAY).saturating_mul(DAY), to - to % DAY);
    let live = format!(
        "{}{corrections}",
        live_sql(plan, req, &read, (from, to), (first_day, end_day))
    );
    if first_day >= end_day {
        return live;
    }
    sealed_days_sql(plan, req, &read, (first_day, end_day), &live)
}

/// The commit-marker rule on a raw usage table (`usage_partials`, `usage_meter_readings`):
/// rows of a batch that was aborted never count. The public views (`v_usage`,
/// `v_usage_readings`) apply the same rule; a read on a base table (for its sorting key, which
/// ClickHouse 18.16 does not push into a view) uses this.
pub const COMMITTED: &str = "batch_id NOT IN (SELECT batch_id FROM usage_aborts)";

/// The per-row sums every fold reads.
const SUMS: &str = "sum(events), sum(value_sum), min(value_min), max(value_max)";

/// The latest event of a fold (LATEST meters).
const LATEST: &str =
    "argMax(latest_value, (latest_time_ms, latest_event_id, agent)), max(latest_time_ms), \
        argMax(latest_event_id, (latest_time_ms, latest_event_id, agent))";

/// Two branches of a fold: only LATEST and UNIQUE_COUNT meters (`special`) need the latest
/// event (an argMax over a tuple with strings, the costliest part of the fold) and the set of
/// distinct values; the other meters' rows skip both (their quantity never reads them). The
/// test on `aggregation` and the columns after the sums.
fn fold_tail(special: bool) -> (&'static str, String) {
    if special {
        (
            "IN",
            format!("{LATEST}, groupUniqArrayArray(unique_values)"),
        )
    } else {
        ("NOT IN", NO_LATEST.to_owned())
    }
}

/// The pieces of a read's SQL that follow from its request alone.
struct Fragments {
    /// The `agent` column, or `''` when agents are summed.
    agent: &'static str,
    /// ` AND customer = … AND meter = …` as asked.
    filter: String,
    /// The partition and batches of a read [`Request::through`] a batch, on partials and days.
    through_partials: String,
    through_days: String,
}

impl Fragments {
    fn of(req: &Request<'_>) -> Fragments {
        let mut filter = req.scope.sql();
        if let Some(m) = req.meter {
            filter.push_str(&format!(" AND meter = {}", quote(m)));
        }
        let (through_partials, through_days) = match req.through {
            None => (String::new(), String::new()),
            Some(t) => (
                format!(" AND part = {} AND bseq <= {}", t.part, t.bseq_max),
                format!(" AND part = {}", t.part),
            ),
        };
        Fragments {
            agent: if req.by_agent { "agent" } else { "''" },
            filter,
            through_partials,
            through_days,
        }
    }

    /// The committed partials matching `where_`, folded at window resolution where
    /// `per_window` holds, else per UTC day (both [`fold_tail`] branches).
    fn partials(&self, where_: &str, per_window: &str) -> String {
        let Fragments {
            agent,
            filter: customer,
            through_partials,
            ..
        } = self;
        let branch = |special: bool| {
            let (test, tail) = fold_tail(special);
            format!(
                "SELECT customer, {agent} AS a, meter, aggregation, group_key, any(group_names), \
                    any(group_values), \
                    if({per_window}, toUInt32(window_start), \
                       toUInt32(intDiv(toUInt32(window_start), 86400) * 86400)) AS s, \
                    toUInt32(max(if({per_window}, toUInt32(window_start) + window_secs, \
                       toUInt32(intDiv(toUInt32(window_start), 86400) * 86400 + 86400)))), \
                    {SUMS}, {tail} \
                 FROM usage_partials \
                 WHERE {where_}{customer}{through_partials} \
                   AND aggregation {test} ('LATEST', 'UNIQUE_COUNT') \
                   AND {COMMITTED} \
                 GROUP BY customer, a, meter, aggregation, group_key, s"
            )
        };
        format!("{} UNION ALL {}", branch(false), branch(true))
    }
}

/// The partials a day-resolution read takes: the unsealed time, the range's partial first and
/// last days (`days` are the whole days inside `range`) and the split days, per window where
/// a day is cut, per day elsewhere.
fn live_sql(
    plan: &Plan,
    req: &Request<'_>,
    read: &Fragments,
    (from, to): (u32, u32),
    (first_day, end_day): (u32, u32),
) -> String {
    let unsealed = unsealed_sql(plan);
    let pday = "toUInt32(intDiv(toUInt32(window_start), 86400) * 86400)";
    let mut ranges = vec![range_sql("window_start", plan.partials_from(from), to)];
    if first_day > from {
        ranges.push(range_sql("window_start", from, first_day.min(to)));
    }
    if end_day < to && end_day >= first_day {
        ranges.push(range_sql("window_start", end_day, to));
    }
    let split_days: std::collections::BTreeSet<u32> =
        req.split.iter().map(|(_, d)| d - d % DAY).collect();
    for d in &split_days {
        if *d + DAY > from && *d < to {
            ranges.push(range_sql(
                "window_start",
                (*d).max(from),
                (*d + DAY).min(to),
            ));
        }
    }
    let split_partials = split_sql(req.split, pday);
    // windows where a day is cut (the range's edges, split days), whole days elsewhere
    let per_window = format!("({pday} < {first_day} OR {pday} >= {end_day} OR {split_partials})");
    read.partials(
        &format!(
            "({ranges}) AND toUInt32(window_start) >= {from} AND toUInt32(window_start) < {to} \
             AND (toUInt32(window_start) >= {unsealed} OR {per_window})",
            ranges = ranges.join(" OR "),
        ),
        &per_window,
    )
}

/// The sealed days wholly inside the range (`days`), then `live`: a row per stored day, or,
/// with [`Request::months_except`], the other customers' days folded per calendar month.
fn sealed_days_sql(
    plan: &Plan,
    req: &Request<'_>,
    read: &Fragments,
    (first_day, end_day): (u32, u32),
    live: &str,
) -> String {
    let Fragments {
        agent,
        filter: customer,
        through_days,
        ..
    } = read;
    let day_col = "toUInt32(toUInt32(day) * 86400)";
    let split_days_sql = split_sql(req.split, day_col);
    let days_filter = format!(
        "day >= toDate(intDiv({first_day}, 86400)) AND day < toDate(intDiv({end_day}, 86400)){customer}{through_days} \
         AND {day_col} < {unsealed} AND NOT {split_days_sql} AND seal_id IN ({seals})",
        unsealed = unsealed_sql(plan),
        seals = seal_list(plan),
    );
    // sealed day rows as stored, one per (customer, agent, meter, group, day): no grouping
    // on the server (the caller merges agents as rows stream in), so no state per key
    let per_day = |extra: &str| {
        format!(
            "SELECT customer, {agent} AS a, meter, aggregation, group_key, group_names, \
                group_values, {day_col} AS s, toUInt32({day_col} + 86400), events, value_sum, \
                value_min, value_max, latest_value, latest_time_ms, latest_event_id, unique_values \
             FROM usage_days WHERE {days_filter}{extra}"
        )
    };
    let Some(except) = req.months_except else {
        return format!("{} UNION ALL {live}", per_day(""));
    };
    let listed = if except.is_empty() {
        "0".to_owned()
    } else {
        let quoted: Vec<String> = except.iter().map(|c| quote(c)).collect();
        format!("customer IN ({})", quoted.join(", "))
    };
    // the others' sealed days folded per calendar month: a row per (customer, meter, group,
    // month) whatever the number of days and agents; latest events and distinct values only
    // for the meters that read them
    let per_month = |special: bool| {
        let (test, tail) = fold_tail(special);
        format!(
            "SELECT customer, {agent} AS a, meter, aggregation, group_key, any(group_names), \
                any(group_values), toUInt32(toUInt32(min(day)) * 86400) AS s, \
                toUInt32(toUInt32(max(day)) * 86400 + 86400), {SUMS}, {tail} \
             FROM usage_days WHERE {days_filter} AND NOT {listed} \
               AND aggregation {test} ('LATEST', 'UNIQUE_COUNT') \
             GROUP BY customer, a, meter, aggregation, group_key, toStartOfMonth(day)"
        )
    };
    let listed_days = if except.is_empty() {
        String::new()
    } else {
        format!("{} UNION ALL ", per_day(&format!(" AND {listed}")))
    };
    format!(
        "{listed_days}{} UNION ALL {} UNION ALL {live}",
        per_month(false),
        per_month(true)
    )
}

/// How far back a pass that covers `[since_ms, now]` must read, per customer, so that
/// corrections reach their periods ([`reach`]): `since_ms` for every customer but those with
/// a correction (a void, an amend, an imported event: docs/INGEST.md "Backfill") recorded at
/// or after `since_ms` for an event before it, which reach back to their earliest such event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Where every customer's read starts at the latest.
    pub since_ms: i64,
    /// The customers whose reads start earlier, each at its earliest corrected event time
    /// (always before `since_ms`).
    pub widened: std::collections::BTreeMap<String, i64>,
}

impl Reach {
    /// Where `customer`'s read starts.
    pub fn of(&self, customer: &str) -> i64 {
        self.widened.get(customer).copied().unwrap_or(self.since_ms)
    }

    /// Where the earliest customer's read starts: for a read that cannot be cut per customer.
    pub fn earliest(&self) -> i64 {
        self.widened
            .values()
            .copied()
            .min()
            .unwrap_or(self.since_ms)
            .min(self.since_ms)
    }
}

/// How far back a pass that covers `[since_ms, now]` must read so that corrections reach their
/// periods, per customer ([`Reach`]): one customer's old correction widens that customer's
/// read only. The rater re-prices, and the invoicer re-bills, a corrected period however old,
/// for as long as the correction is within their lookback, without a setting changed. Reads
/// the `created_ms` and `event_time_ms` columns of `usage_corrections` (one row per
/// correction or imported event; the table is sorted by customer and has no time key), and
/// returns one row per customer that reaches back before `since_ms`.
pub async fn reach(db: &Client, since_ms: i64) -> Result<Reach, clickhouse::error::Error> {
    let rows: Vec<(String, i64)> = db
        .query(
            "SELECT customer, toInt64(min(event_time_ms)) AS earliest FROM usage_corrections \
             WHERE created_ms >= ? AND event_time_ms < ? GROUP BY customer",
        )
        .bind(since_ms)
        .bind(since_ms)
        .fetch_all()
        .await?;
    Ok(Reach {
        since_ms,
        widened: rows.into_iter().collect(),
    })
}

/// `customer IN (...)` of the customers [`reach`] widens at `since_ms`, computed by the server
/// (binds `since_ms` twice, in order): for a read that widens those customers only, without
/// sending their ids in the query text.
pub const WIDENED_CUSTOMERS_SQL: &str = "customer IN (SELECT customer FROM usage_corrections \
     WHERE created_ms >= ? AND event_time_ms < ?)";

/// Reads committed usage of `req` (see the module docs); rows in no particular order.
pub async fn read(
    db: &Client,
    plan: &Plan,
    req: &Request<'_>,
) -> Result<Vec<UsageRow>, clickhouse::error::Error> {
    db.query(&read_sql(plan, req)).fetch_all().await
}

/// [`read`], handing each row to `each` as it arrives (no row vector): for reads of many
/// customers. Returns the number of rows.
pub async fn read_each(
    db: &Client,
    plan: &Plan,
    req: &Request<'_>,
    mut each: impl FnMut(UsageRow),
) -> Result<usize, clickhouse::error::Error> {
    let mut cursor = db.query(&read_sql(plan, req)).fetch::<UsageRow>()?;
    let mut n = 0;
    while let Some(row) = cursor.next().await? {
        each(row);
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_start_at_the_earliest_unsealed_day() {
        let d = 1_795_651_200; // 2026-11-26
        let plan = Plan {
            sealed: vec![(0, d), (1, d - DAY)],
            seals: vec![],
        };
        assert_eq!(plan.partials_from(d - 10 * DAY), d);
        let unsealed = Plan {
            sealed: vec![(0, d), (1, 0)],
            seals: vec![],
        };
        assert_eq!(unsealed.partials_from(d - 10 * DAY), d - 10 * DAY);
        assert_eq!(Plan::default().partials_from(5), 5);
    }

    fn row(agg: &str, value: i128, time_ms: i64, id: &str, unique: &[&str]) -> UsageRow {
        UsageRow {
            customer: "c".into(),
            agent: "a".into(),
            meter: "m".into(),
            aggregation: agg.into(),
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            start: 0,
            end: 60,
            events: 1,
            sum: Units(value),
            min: Units(value),
            max: Units(value),
            latest: Units(value),
            latest_time_ms: time_ms,
            latest_event_id: id.into(),
            unique_values: unique.iter().map(|u| (*u).to_owned()).collect(),
        }
    }

    #[test]
    fn merging_totals_is_adding_their_rows() {
        let rows = [
            row("SUM", 5, 10, "b", &["u1", "u2"]),
            row("SUM", 2, 30, "a", &["u2"]),
            row("SUM", 9, 30, "c", &["u3"]),
            row("SUM", 1, 5, "d", &[]),
        ];
        let mut all = Totals::default();
        for r in &rows {
            all.add(r).unwrap();
        }
        let (mut left, mut right) = (Totals::default(), Totals::default());
        for r in &rows[..2] {
            left.add(r).unwrap();
        }
        for r in &rows[2..] {
            right.add(r).unwrap();
        }
        left.merge(&right).unwrap();
        left.merge(&Totals::default()).unwrap();
        for agg in ["SUM", "COUNT", "MIN", "MAX", "LATEST", "UNIQUE_COUNT"] {
            assert_eq!(left.quantity(agg), all.quantity(agg), "{agg}");
        }
    }

    #[test]
    fn a_reach_widens_only_its_customers() {
        let none = Reach {
            since_ms: 1_000,
            widened: Default::default(),
        };
        assert_eq!((none.of("a"), none.earliest()), (1_000, 1_000));
        let reach = Reach {
            since_ms: 1_000,
            widened: [("a".to_owned(), 400), ("b".to_owned(), 700)]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            (reach.of("a"), reach.of("b"), reach.of("c")),
            (400, 700, 1_000)
        );
        assert_eq!(reach.earliest(), 400);
    }

    #[test]
    fn a_list_of_customers_is_quoted_and_an_empty_one_reads_nothing() {
        let list = vec!["a".to_owned(), "o'brien".to_owned()];
        assert_eq!(
            Scope::Customers(&list).sql(),
            r" AND customer IN ('a', 'o\'brien')"
        );
        assert_eq!(Scope::Customers(&[]).sql(), " AND 0");
        assert_eq!(Scope::All.sql(), "");
    }

    #[test]
    fn split_days_are_quoted() {
        let split = vec![("o'brien".to_owned(), 86_400 + 5)];
        assert_eq!(
            split_sql(&split, "d"),
            r"(customer, d) IN (('o\'brien', 86400))"
        );
    }
}
