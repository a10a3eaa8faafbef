//! Where an invoice line comes from: its charge, the committed usage windows of that charge's
//! customer, meter and group within the charge's usage span in its period (the partials, read
//! through `tally_platform::usage`), and the events behind them (the counted
//! `usage_meter_readings`), each with when it was committed. Every read is bounded by the
//! customer and the charge's span on the tables' sorting keys. For an adjustment line the events
//! committed after the corrected invoice was finalized are marked late. Read-only; results
//! are bounded by [`ROWS_MAX`] (`truncated` says when more exist).

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::CustomerId;
use tally_platform::store::dec9;
use tally_platform::usage;

use crate::invoice::{rfc3339, InvoiceLine, LineKind};

/// The most windows and the most events listed for one line.
pub const ROWS_MAX: usize = 1_000;

/// The lineage of one line.
#[derive(Debug, Serialize)]
pub struct Lineage {
    pub invoice_id: String,
    pub line_no: u32,
    pub kind: LineKind,
    pub charge_id: String,
    pub customer: CustomerId,
    pub meter: String,
    pub group_key: String,
    pub period_start: String,
    pub period_end: String,
    pub plan_id: String,
    pub plan_version: u32,
    pub adjusts_invoice_id: Option<String>,
    pub windows: Vec<Window>,
    pub events: Vec<Event>,
    /// Events committed after the corrected invoice was finalized (adjustment lines).
    pub late_event_ids: Vec<String>,
    pub truncated: bool,
}

/// One committed usage window (times in unix seconds).
#[derive(Debug, Serialize)]
pub struct Window {
    pub window_start: u32,
    pub window_end: u32,
    pub agent: String,
    pub group_key: String,
    pub quantity: Decimal,
    pub event_count: u64,
}

/// One event behind the line.
#[derive(Debug, Serialize)]
pub struct Event {
    pub event_id: String,
    pub agent: String,
    pub time_ms: i64,
    pub window_start: u32,
    pub value: Decimal,
    /// When the aggregator committed it (unix seconds).
    pub committed_at: u32,
}

struct WindowRow {
    window_start: u32,
    window_end: u32,
    agent: String,
    group_key: String,
    quantity: Decimal,
    event_count: u64,
}

#[derive(Deserialize, clickhouse::Row)]
struct EventRow {
    event_id: String,
    agent: String,
    time_ms: i64,
    window_start: u32,
    #[serde(with = "dec9")]
    value: Decimal,
    committed_at: u32,
}

#[derive(Deserialize, clickhouse::Row)]
struct ChargeScope {
    customer: CustomerId,
    period_start: u32,
    period_end: u32,
    /// The charge's own usage span within the period (`usage_from` .. `usage_to`, its first
    /// window's start and last window's end): a period split by a plan change has one charge
    /// per part, each with its own span.
    usage_from: u32,
    usage_to: u32,
}

/// The lineage of `line` of `invoice_id`; `None` when its charge is unknown.
pub async fn of_line(
    db: &Client,
    invoice_id: &str,
    line: &InvoiceLine,
) -> Result<Option<Lineage>, clickhouse::error::Error> {
    let Some(scope) = charge_scope(db, &line.charge_id).await? else {
        return Ok(None);
    };
    let windows = windows(db, &scope, line).await?;
    let events = events(db, &scope, line).await?;
    let truncated = windows.len() > ROWS_MAX || events.len() > ROWS_MAX;
    let windows: Vec<Window> = windows
        .into_iter()
        .take(ROWS_MAX)
        .map(Window::from)
        .collect();
    let events: Vec<Event> = events.into_iter().take(ROWS_MAX).map(Event::from).collect();
    let late_event_ids = match &line.adjusts_invoice_id {
        Some(corrected) => late_event_ids(db, corrected, &events).await?,
        None => Vec::new(),
    };
    Ok(Some(Lineage {
        invoice_id: invoice_id.to_owned(),
        line_no: line.line_no,
        kind: line.kind,
        charge_id: line.charge_id.clone(),
        customer: scope.customer,
        meter: line.meter.clone(),
        group_key: line.group_key.clone(),
        period_start: rfc3339(i64::from(scope.period_start) * 1000),
        period_end: rfc3339(i64::from(scope.period_end) * 1000),
        plan_id: line.plan_id.clone(),
        plan_version: line.plan_version,
        adjusts_invoice_id: line.adjusts_invoice_id.clone(),
        windows,
        events,
        late_event_ids,
        truncated,
    }))
}

/// The charge's customer, period and usage span; `None` when the charge is unknown.
async fn charge_scope(
    db: &Client,
    charge_id: &str,
) -> Result<Option<ChargeScope>, clickhouse::error::Error> {
    db.query(
        "SELECT customer, toUInt32(period_start), toUInt32(period_end), \
                toUInt32(greatest(period_start, usage_from)), \
                toUInt32(if(usage_to > usage_from, least(period_end, usage_to), greatest(period_start, usage_from))) \
         FROM v_charges WHERE charge_id = ? LIMIT 1",
    )
    .bind(charge_id)
    .fetch_optional()
    .await
}

/// The committed windows of the line's meter and group in the charge's span, in time order
/// (then agent, group), at most `ROWS_MAX + 1`.
async fn windows(
    db: &Client,
    scope: &ChargeScope,
    line: &InvoiceLine,
) -> Result<Vec<WindowRow>, clickhouse::error::Error> {
    let req = usage::Request {
        from: scope.usage_from,
        to: scope.usage_to,
        scope: usage::Scope::Customer(scope.customer.as_str()),
        meter: Some(&line.meter),
        by_agent: true,
        resolution: usage::Resolution::Windows,
        split: &[],
        months_except: None,
        through: None,
    };
    let mut rows = usage::read(db, &usage::Plan::default(), &req).await?;
    rows.retain(|r| line.group_key == "{}" || r.group_key == line.group_key);
    rows.sort_by(|a, b| (a.start, &a.agent, &a.group_key).cmp(&(b.start, &b.agent, &b.group_key)));
    Ok(rows
        .into_iter()
        .take(ROWS_MAX + 1)
        .map(|r| WindowRow {
            window_start: r.start,
            window_end: r.end,
            quantity: r.quantity().unwrap_or_default(),
            agent: r.agent,
            group_key: r.group_key,
            event_count: r.events,
        })
        .collect())
}

/// The committed events behind the line (the counted readings, on the table's sorting key:
/// ClickHouse 18.16 pushes no predicate into `v_usage_readings`, which also lacks the commit
/// time), at most `ROWS_MAX + 1`.
async fn events(
    db: &Client,
    scope: &ChargeScope,
    line: &InvoiceLine,
) -> Result<Vec<EventRow>, clickhouse::error::Error> {
    let sql = format!(
        "SELECT event_id, agent, time_ms AS t, toUInt32(window_start), value, toUInt32(inserted_at) \
         FROM usage_meter_readings \
         WHERE customer = ? AND meter = ? \
           AND toStartOfHour(window_start) >= toStartOfHour(toDateTime(?)) AND window_start >= toDateTime(?) \
           AND toStartOfHour(window_start) <= toStartOfHour(toDateTime(?)) AND window_start < toDateTime(?) \
           AND (? = '' OR group_key = ?) AND {committed} \
         ORDER BY t, event_id, agent LIMIT ?",
        committed = usage::COMMITTED,
    );
    scoped(db, &sql, scope, line).await
}

/// The events committed after `corrected` was finalized (to the second).
async fn late_event_ids(
    db: &Client,
    corrected: &str,
    events: &[Event],
) -> Result<Vec<String>, clickhouse::error::Error> {
    let finalized_at_ms: i64 = db
        .query(
            "SELECT toInt64(min(at_ms)) FROM invoice_transitions \
             WHERE invoice_id = ? AND to_status = 'finalized'",
        )
        .bind(corrected)
        .fetch_one()
        .await?;
    Ok(events
        .iter()
        .filter(|e| i64::from(e.committed_at) * 1000 >= finalized_at_ms.div_euclid(1000) * 1000)
        .map(|e| e.event_id.clone())
        .collect())
}

impl From<WindowRow> for Window {
    fn from(w: WindowRow) -> Window {
        Window {
            window_start: w.window_start,
            window_end: w.window_end,
            agent: w.agent,
            group_key: w.group_key,
            quantity: w.quantity.normalize(),
            event_count: w.event_count,
        }
    }
}

impl From<EventRow> for Event {
    fn from(e: EventRow) -> Event {
        Event {
            event_id: e.event_id,
            agent: e.agent,
            time_ms: e.time_ms,
            window_start: e.window_start,
            value: e.value.normalize(),
            committed_at: e.committed_at,
        }
    }
}

/// Rows of `sql` for the line's customer, meter, usage span and group (binds in that order:
/// customer, meter, span start twice, span end twice, group twice, limit), at most
/// `ROWS_MAX + 1`.
async fn scoped<T>(
    db: &Client,
    sql: &str,
    scope: &ChargeScope,
    line: &InvoiceLine,
) -> Result<Vec<T>, clickhouse::error::Error>
where
    T: clickhouse::RowOwned + clickhouse::RowRead,
{
    let group = if line.group_key == "{}" {
        ""
    } else {
        line.group_key.as_str()
    };
    db.query(sql)
        .bind(scope.customer.as_str())
        .bind(&line.meter)
        .bind(scope.usage_from)
        .bind(scope.usage_from)
        .bind(scope.usage_to)
        .bind(scope.usage_to)
        .bind(group)
        .bind(group)
        .bind(ROWS_MAX as u64 + 1)
        .fetch_all()
        .await
}
