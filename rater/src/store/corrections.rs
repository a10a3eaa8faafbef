//! The storage of corrections (migrations 0060, 0062 and 0064; the rules are
//! [`crate::corrections`]): loading the facts a correction is decided on, appending it, and
//! the correction made end to end ([`correct`]: load, decide, append, re-read with
//! [`read_back`]).
//!
//! Every read is bounded on its table's sorting key: the event's readings, raw row and deltas
//! by the hour of its window (at most [`WINDOW_MAX_SECS`] before its time) and its customer;
//! corrections by customer (then agent and event), and the rows of a correction id by
//! customer (the id is not a prefix of the key: the customer's correction rows, the small
//! table, are read once per request).

use clickhouse::Client;
use serde::Serialize;

use crate::corrections::{
    amended, content_of, data_of, decide, winner, Change, Correction, CorrectionError, Decision,
    Delta, Facts, Leftover, Reading, Valid,
};

/// How far before the event time its window may start: the aggregator's largest window.
pub const WINDOW_MAX_SECS: i64 = 86_400;

const CORRECTION_COLUMNS: &str = "correction_id, customer, agent, event_id, event_time_ms, \
    revision, kind, actor, reason, created_ms, toUInt32(created_at), digest";

/// `window_start` within the hours an event at `secs` can have its window in.
fn window_hours(secs: i64) -> String {
    format!(
        "toStartOfHour(window_start) >= toStartOfHour(toDateTime({})) \
         AND toStartOfHour(window_start) <= toStartOfHour(toDateTime({secs}))",
        (secs - WINDOW_MAX_SECS).max(0)
    )
}

/// Loads the facts a correction is decided on.
pub async fn load(db: &Client, req: &Valid) -> Result<Facts, CorrectionError> {
    let secs = req.time_ms.div_euclid(1000);
    let (customer, agent, event) = (
        req.customer.as_str(),
        req.agent.as_str(),
        req.event_id.as_str(),
    );
    let readings = db
        .query(&format!(
            "SELECT meter, aggregation, toUInt32(window_start), window_secs, group_names, \
                    group_values, group_key, value, toInt64(1) \
             FROM usage_meter_readings \
             WHERE {} AND customer = ? AND agent = ? AND event_id = ? AND time_ms = ? \
               AND batch_id NOT IN (SELECT batch_id FROM usage_aborts) \
             LIMIT 1 BY meter",
            window_hours(secs)
        ))
        .bind(customer)
        .bind(agent)
        .bind(event)
        .bind(req.time_ms)
        .fetch_all::<Reading>()
        .await?;
    // the deltas of the customer's counted corrections (tally_platform::usage has the rule)
    let deltas = db
        .query(&format!(
            "SELECT meter, aggregation, toUInt32(window_start), window_secs, group_names, \
                    group_values, group_key, value, events \
             FROM usage_correction_deltas \
             WHERE {} AND customer = ? AND agent = ? AND event_id = ? AND {} \
             LIMIT 1 BY correction_id, meter, group_key, window_start",
            window_hours(secs),
            tally_platform::usage::counted_deltas_sql(" AND customer = ?"),
        ))
        .bind(customer)
        .bind(agent)
        .bind(event)
        .bind(customer)
        .fetch_all::<Reading>()
        .await?;
    let of_event = of_event(db, customer, agent, event).await?;
    let same_id = same_id(db, customer, req.correction_id.as_str()).await?;
    let leftover = match same_id {
        Some(_) => Leftover::default(),
        None => leftover(db, customer, req.correction_id.as_str()).await?,
    };
    // an imported event's window is its import's (its deltas)
    let target = match (&req.change, readings.first().or(deltas.first())) {
        (Change::Amend(data), Some(r)) => {
            let event_type = match event_type(db, req).await? {
                t if t.is_empty() => imported_type(db, req, &of_event).await?,
                t => t,
            };
            // without its type no meter reads the new data: amending would void the event
            if event_type.is_empty() {
                return Err(CorrectionError::Invalid {
                    field: "data",
                    detail: "the event's stored type is unknown (its raw row is not kept), so \
                             its new data cannot be read; void it and import the corrected \
                             event (POST /v1/backfill) instead"
                        .into(),
                });
            }
            let meters = crate::store::registry::meters(db)
                .await
                .map_err(|e| CorrectionError::Meters(e.to_string()))?;
            amended(&meters, &event_type, data, (r.window_start, r.window_secs))?
        }
        _ => Vec::new(),
    };
    Ok(Facts {
        readings,
        deltas,
        of_event,
        same_id,
        target,
        leftover,
    })
}

/// What a failed attempt left under a correction id that has no correction row: its deltas
/// (any event, any hour: read by customer, the table's second key, and the id) and its data.
/// Read once per new correction id, never for a re-sent one.
async fn leftover(
    db: &Client,
    customer: &str,
    correction_id: &str,
) -> Result<Leftover, clickhouse::error::Error> {
    let deltas = db
        .query(
            "SELECT correction_id, customer, agent, event_id, revision, meter, aggregation, \
             toUInt32(window_start), window_secs, group_names, group_values, group_key, \
             events, value, toUInt32(created_at), digest \
             FROM usage_correction_deltas WHERE customer = ? AND correction_id = ?",
        )
        .bind(customer)
        .bind(correction_id)
        .fetch_all::<Delta>()
        .await?;
    let data = db
        .query("SELECT data FROM usage_correction_data WHERE customer = ? AND correction_id = ?")
        .bind(customer)
        .bind(correction_id)
        .fetch_all::<String>()
        .await?;
    Ok(Leftover { deltas, data })
}

/// The type of the committed event (its raw row).
async fn event_type(db: &Client, req: &Valid) -> Result<String, CorrectionError> {
    let secs = req.time_ms.div_euclid(1000);
    Ok(db
        .query(
            "SELECT event_type FROM usage_raw \
             WHERE toStartOfHour(time) = toStartOfHour(toDateTime(?)) \
               AND customer = ? AND agent = ? AND event_id = ? AND time_ms = ? \
               AND batch_id NOT IN (SELECT batch_id FROM usage_aborts) LIMIT 1",
        )
        .bind(secs)
        .bind(req.customer.as_str())
        .bind(req.agent.as_str())
        .bind(req.event_id.as_str())
        .bind(req.time_ms)
        .fetch_optional::<String>()
        .await?
        .unwrap_or_default())
}

/// The type of an imported event: the `type` of the event its counted backfill stored (empty
/// when none).
async fn imported_type(
    db: &Client,
    req: &Valid,
    of_event: &[Correction],
) -> Result<String, CorrectionError> {
    let customer = req.customer.as_str();
    let Some(b) =
        crate::corrections::winners_of(of_event, req.agent.as_str(), req.event_id.as_str())
            .into_iter()
            .find(|c| c.kind == crate::backfill::KIND)
    else {
        return Ok(String::new());
    };
    let stored = same_id(db, customer, &b.correction_id)
        .await?
        .map(|(_, data)| data)
        .unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        event_type: String,
    }
    Ok(serde_json::from_str::<Typed>(&stored)
        .map(|t| t.event_type)
        .unwrap_or_default())
}

/// The correction stored under `correction_id` whose content counts (of the rows two racing
/// instances may have stored: [`crate::corrections::contents`]), with its amended data (""
/// for a void).
async fn same_id(
    db: &Client,
    customer: &str,
    correction_id: &str,
) -> Result<Option<(Correction, String)>, clickhouse::error::Error> {
    let rows: Vec<Correction> = db
        .query(&format!(
            "SELECT {CORRECTION_COLUMNS} FROM usage_corrections \
             WHERE customer = ? AND correction_id = ? ORDER BY created_ms, digest, revision"
        ))
        .bind(customer)
        .bind(correction_id)
        .fetch_all()
        .await?;
    let Some(c) = content_of(&rows, correction_id) else {
        return Ok(None);
    };
    let data: Vec<String> = db
        .query(
            "SELECT data FROM usage_correction_data WHERE customer = ? AND correction_id = ? \
             ORDER BY created_at, data",
        )
        .bind(customer)
        .bind(correction_id)
        .fetch_all()
        .await?;
    Ok(Some((c.clone(), data_of(c, &data))))
}

/// The rows of the customer's correction ids that have a row of one of `events` (`(agent,
/// event_id) IN (...)` with its binds): every row of each such id, of any event (the content
/// that counts for an id may be of another event than a losing one: [`crate::corrections::
/// contents`]). Bounded by customer, the table's first key.
fn of_ids_sql(events: &str) -> String {
    format!(
        "SELECT {CORRECTION_COLUMNS} FROM usage_corrections \
         WHERE customer = ? AND correction_id IN \
               (SELECT correction_id FROM usage_corrections WHERE customer = ? AND {events}) \
         ORDER BY revision, correction_id, created_ms, digest \
         LIMIT 1 BY correction_id, agent, event_id, revision, digest, created_ms"
    )
}

/// Every correction recorded for an event, counted or not, with every other row of their ids
/// (see [`of_ids_sql`]): what decides which of them counts ([`crate::corrections::winners`]).
pub async fn of_event(
    db: &Client,
    customer: &str,
    agent: &str,
    event_id: &str,
) -> Result<Vec<Correction>, clickhouse::error::Error> {
    db.query(&of_ids_sql("agent = ? AND event_id = ?"))
        .bind(customer)
        .bind(customer)
        .bind(agent)
        .bind(event_id)
        .fetch_all()
        .await
}

/// A page of a customer's corrections (each id once, with the content that counts for it,
/// counted or not), by correction id: at most `limit` after the id `after` (empty: from the
/// first).
pub async fn of_customer(
    db: &Client,
    customer: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<Correction>, clickhouse::error::Error> {
    db.query(&format!(
        "SELECT {CORRECTION_COLUMNS} FROM usage_corrections \
         WHERE customer = ? AND correction_id > ? \
         ORDER BY correction_id, created_ms, digest, revision LIMIT 1 BY correction_id LIMIT ?"
    ))
    .bind(customer)
    .bind(after)
    .bind(limit)
    .fetch_all()
    .await
}

/// Every correction of the customer's events `events` ((source, id) pairs), with every other
/// row of their ids ([`of_ids_sql`]): what decides which of an event's corrections counts.
pub async fn of_events(
    db: &Client,
    customer: &str,
    events: &[(&str, &str)],
) -> Result<Vec<Correction>, clickhouse::error::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = db.query(&of_ids_sql(&format!(
        "(agent, event_id) IN ({})",
        vec!["(?, ?)"; events.len()].join(", ")
    )));
    q = q.bind(customer).bind(customer);
    for (agent, event) in events {
        q = q.bind(*agent).bind(*event);
    }
    q.fetch_all().await
}

#[derive(clickhouse::Row, Serialize)]
struct DataRow<'a> {
    customer: &'a str,
    correction_id: &'a str,
    data: &'a str,
    created_at: u32,
}

/// Appends a correction: its deltas and data first, then the correction row (a delta without
/// its correction row never counts: readers take deltas only of recorded corrections).
pub async fn append(
    db: &Client,
    correction: &Correction,
    deltas: &[Delta],
    data: &str,
) -> Result<(), clickhouse::error::Error> {
    append_effects(db, correction, deltas, data).await?;
    let mut insert = db.insert::<Correction>("usage_corrections").await?;
    insert.write(correction).await?;
    insert.end().await
}

/// The first half of [`append`]: the deltas and the data, without the correction row. An
/// attempt that stops after it left what [`crate::corrections::Leftover`] is about (public so
/// that the tests make one).
pub async fn append_effects(
    db: &Client,
    correction: &Correction,
    deltas: &[Delta],
    data: &str,
) -> Result<(), clickhouse::error::Error> {
    if !deltas.is_empty() {
        let mut insert = db.insert::<Delta>("usage_correction_deltas").await?;
        for d in deltas {
            insert.write(d).await?;
        }
        insert.end().await?;
    }
    if !data.is_empty() {
        let mut insert = db.insert::<DataRow<'_>>("usage_correction_data").await?;
        insert
            .write(&DataRow {
                customer: &correction.customer,
                correction_id: &correction.correction_id,
                data,
                created_at: correction.created_at,
            })
            .await?;
        insert.end().await?;
    }
    Ok(())
}

/// Corrections made by this process, one at a time (load to re-read): two racing requests to
/// one API instance are decided in turn, so the second sees the first.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Makes a correction by `actor` at `now_ms`: loads, decides, appends, then re-reads
/// ([`read_back`]) so that a correction that lost a race is answered as such. Returns the
/// correction that counts and whether this call appended it.
///
/// Within one process corrections are made one at a time, so the answer is always right.
/// Between two API instances, both may decide before either appends: readers still count one
/// content per correction id and the smallest correction id of a revision, and the re-read
/// answers the loser `correction_exists` (same id, other content) or `correction_conflict`
/// (another id of the event) unless it re-read before the winner's rows arrived; then it is
/// answered 201 although `GET /v1/customers/{id}/corrections` shows it with `counts: false`
/// (or shows the other content under its id).
pub async fn correct(
    db: &Client,
    req: &Valid,
    actor: &str,
    now_ms: i64,
) -> Result<(Correction, bool), CorrectionError> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let facts = load(db, req).await?;
    let (ours, appended) = match decide(req, &facts, actor, now_ms)? {
        Decision::Recorded(c) => (c, false),
        Decision::Append(c, deltas) => {
            append(db, &c, &deltas, req.change.data()).await?;
            (c, true)
        }
    };
    read_back(db, ours, appended).await
}

/// After `ours` was appended (or found stored), re-reads its event's corrections and every
/// row of their ids: `correction_exists` when another content under its id counts (two
/// instances raced with one new id: [`crate::corrections::contents`]), `correction_conflict`
/// when another correction of its revision of the event counts; otherwise `ours` (the stored
/// row that counts, when the same content was stored twice) and `appended`.
pub async fn read_back(
    db: &Client,
    ours: Correction,
    appended: bool,
) -> Result<(Correction, bool), CorrectionError> {
    let after = of_event(db, &ours.customer, &ours.agent, &ours.event_id).await?;
    let ours = match content_of(&after, &ours.correction_id) {
        Some(stored) if stored.digest != ours.digest => {
            return Err(CorrectionError::CorrectionExists(ours.correction_id))
        }
        Some(stored) => stored.clone(),
        None => ours,
    };
    match winner(&after, &ours) {
        Some(w) if w.correction_id != ours.correction_id => Err(CorrectionError::Conflict {
            ours: ours.correction_id,
            winner: w.correction_id.clone(),
        }),
        _ => Ok((ours, appended)),
    }
}
