//! Corrections of committed events: voiding or amending an event, named by its identity
//! (customer, source, id), after the aggregator committed it, with an actor and a reason.
//!
//! It owns the correction's rules (pure; the storage is [`crate::store::corrections`]): what
//! a correction changes in the usage, and when one is refused. An event's *current* readings
//! are its committed meter readings (`usage_meter_readings`, looked up by the event's
//! identity and time, so the caller never states the quantities it takes away) plus the
//! deltas of the corrections of it that count. A void's target is no readings; an amend's is
//! what the stored meters read from its new `data` (same event type, same window). The
//! correction's deltas are target minus current, per (meter, group, window). Refused: no such
//! committed event, a meter that is not a SUM, an event already voided, a correction id
//! reused for something else, a `data` the meters cannot read.
//!
//! Billing reads add the deltas to usage (`tally_platform::usage`), so the rater's next pass
//! recomputes the period's charges and the invoicer's late-usage path turns a changed charge
//! of a finalized invoice into a credit note or an adjustment naming the correction
//! (`tally_invoicer::late`).
//!
//! Exactly once: a correction's identity is (customer, correction id). Re-sending the same
//! correction finds it stored and appends nothing. An attempt that failed before its
//! correction row was written (its deltas or data are stored, its row is not: it never
//! counted) leaves rows under the id; a later request under that id is appended only if it
//! writes exactly those rows again, completing the attempt ([`Leftover`]); any other content
//! is refused `correction_exists`, so a leftover never counts beside another content.
//!
//! Two requests under the same *new* id with different content, on two API instances, may
//! both find nothing stored and both write their rows. Every row carries its content's
//! [`digest`], and per id only one content counts, for every reader ([`contents`]): the one
//! of the earliest stored row (`created_ms`), ties broken by the smaller digest, then the
//! smaller revision; only the deltas carrying that row's revision and digest are read. The
//! API re-reads after writing and answers the loser `correction_exists`. Corrections of an
//! event are numbered revisions; two racing corrections of the same event may both reach
//! storage as revision n, and of the counted contents only the one with the smallest
//! correction id counts, for every reader ([`winners`]); the API answers the other
//! `correction_conflict` after it re-reads. Deltas written twice (a retried insert) count
//! once: readers take one row per (correction, meter, group, window).
//! Docs: docs/INGEST.md, "Corrections".

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tally_domain::data::DataView;
use tally_domain::{AgentId, CustomerId, EventId, Meter};
use tally_platform::store::{datetime_secs, dec9};

/// Longest reason accepted, in bytes.
pub const REASON_MAX_BYTES: usize = 1024;

/// Largest amended `data`, in bytes (the gateway's default event bound).
pub const DATA_MAX_BYTES: usize = 65_536;

/// A correction as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionRequest {
    /// The correction's own id, chosen by the caller: re-sending it is safe.
    pub correction_id: String,
    /// `void` or `amend`.
    pub kind: String,
    pub customer: String,
    /// The event's `source` (agent).
    pub source: String,
    /// The event's `id`.
    pub id: String,
    /// The event's `time` (RFC 3339): bounds the lookup of its readings.
    pub time: String,
    pub reason: String,
    /// `amend`: the event's corrected `data` (a JSON object); absent for `void`.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// What a correction does to the event.
#[derive(Debug, Clone)]
pub enum Change {
    Void,
    /// The corrected `data`, as sent.
    Amend(Box<RawValue>),
}

impl Change {
    /// The stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Void => "void",
            Change::Amend(_) => "amend",
        }
    }

    /// The stored data: the amended `data`, empty for a void.
    pub fn data(&self) -> &str {
        match self {
            Change::Void => "",
            Change::Amend(d) => d.get(),
        }
    }
}

/// A validated correction.
#[derive(Debug, Clone)]
pub struct Valid {
    pub correction_id: EventId,
    pub customer: CustomerId,
    pub agent: AgentId,
    pub event_id: EventId,
    pub time_ms: i64,
    pub reason: String,
    pub change: Change,
}

/// Why a correction is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CorrectionError {
    #[error("field {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("no committed event {event_id:?} of customer {customer:?} and source {agent:?} at that time")]
    EventNotFound {
        customer: String,
        agent: String,
        event_id: String,
    },
    #[error(
        "meter {meter:?} aggregates by {aggregation}; only SUM meters can be corrected so far"
    )]
    NotCorrectable { meter: String, aggregation: String },
    #[error("field data: meter {meter:?} cannot read it: {detail}")]
    InvalidQuantity { meter: String, detail: String },
    #[error("the event is already voided by correction {by:?}")]
    AlreadyVoided { by: String },
    #[error("correction {0:?} exists with other content")]
    CorrectionExists(String),
    #[error(
        "correction {ours:?} lost a race for the event to correction {winner:?}, which counts"
    )]
    Conflict { ours: String, winner: String },
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("the stored meters cannot be read: {0}")]
    Meters(String),
}

impl CorrectionError {
    /// The stable code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            CorrectionError::Invalid { .. } => "invalid_correction",
            CorrectionError::EventNotFound { .. } => "event_not_found",
            CorrectionError::NotCorrectable { .. } => "not_correctable",
            CorrectionError::InvalidQuantity { .. } => "invalid_quantity",
            CorrectionError::AlreadyVoided { .. } => "already_voided",
            CorrectionError::CorrectionExists(_) => "correction_exists",
            CorrectionError::Conflict { .. } => "correction_conflict",
            CorrectionError::ClickHouse(_) | CorrectionError::Meters(_) => "unavailable",
        }
    }
}

fn invalid(field: &'static str, detail: impl ToString) -> CorrectionError {
    CorrectionError::Invalid {
        field,
        detail: detail.to_string(),
    }
}

impl CorrectionRequest {
    /// Checks every field (ids as the event contract has them).
    pub fn validate(self) -> Result<Valid, CorrectionError> {
        let change = match (self.kind.as_str(), self.data) {
            ("void", None) => Change::Void,
            ("void", Some(_)) => return Err(invalid("data", "a void takes no data")),
            ("amend", Some(d)) if d.get().len() > DATA_MAX_BYTES => {
                return Err(invalid("data", format!("at most {DATA_MAX_BYTES} bytes")))
            }
            ("amend", Some(d)) => Change::Amend(d),
            ("amend", None) => return Err(invalid("data", "an amend needs the corrected data")),
            (other, _) => return Err(invalid("kind", format!("{other:?}: void or amend"))),
        };
        let reason = self.reason.trim().to_owned();
        if reason.is_empty() || reason.len() > REASON_MAX_BYTES {
            return Err(invalid(
                "reason",
                format!("1 to {REASON_MAX_BYTES} bytes, not blank"),
            ));
        }
        let time_ms = chrono::DateTime::parse_from_rfc3339(&self.time)
            .map_err(|e| invalid("time", e))?
            .timestamp_millis();
        Ok(Valid {
            correction_id: EventId::new(self.correction_id)
                .map_err(|e| invalid("correction_id", e))?,
            customer: CustomerId::new(self.customer).map_err(|e| invalid("customer", e))?,
            agent: AgentId::new(self.source).map_err(|e| invalid("source", e))?,
            event_id: EventId::new(self.id).map_err(|e| invalid("id", e))?,
            time_ms,
            reason,
            change,
        })
    }
}

/// One reading of the corrected event (committed, a delta, or a target), per (meter, group,
/// window).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct Reading {
    pub meter: String,
    pub aggregation: String,
    pub window_start: u32,
    pub window_secs: u32,
    pub group_names: Vec<String>,
    pub group_values: Vec<String>,
    pub group_key: String,
    #[serde(with = "dec9")]
    pub value: Decimal,
    /// Events behind it: 1 for a committed reading, the delta's count for a delta.
    pub events: i64,
}

/// The stored kind of the correction that imports an event ([`crate::backfill::KIND`]):
/// corrections own every kind (`void`, `amend`, `backfill`), so the rules of an import build
/// on the corrections' and never the other way round.
pub const BACKFILL_KIND: &str = "backfill";

/// A stored correction.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct Correction {
    pub correction_id: String,
    pub customer: String,
    pub agent: String,
    pub event_id: String,
    pub event_time_ms: i64,
    pub revision: u32,
    pub kind: String,
    pub actor: String,
    pub reason: String,
    pub created_ms: i64,
    /// `created_ms` in seconds (the table's `DateTime`).
    pub created_at: u32,
    /// The content's [`digest`] ('' on rows written before migration 0064).
    pub digest: String,
}

/// One delta row: what a correction changes in one (meter, group, window).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct Delta {
    pub correction_id: String,
    pub customer: String,
    pub agent: String,
    pub event_id: String,
    pub revision: u32,
    pub meter: String,
    pub aggregation: String,
    pub window_start: u32,
    pub window_secs: u32,
    pub group_names: Vec<String>,
    pub group_values: Vec<String>,
    pub group_key: String,
    pub events: i64,
    #[serde(with = "dec9")]
    pub value: Decimal,
    pub created_at: u32,
    /// The [`digest`] of the content of the correction that wrote it.
    pub digest: String,
}

/// What is stored about the corrected event and the correction's id.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The event's committed readings (empty: no such committed event).
    pub readings: Vec<Reading>,
    /// The deltas of the event's counted corrections.
    pub deltas: Vec<Reading>,
    /// Every correction recorded for the event, counted or not.
    pub of_event: Vec<Correction>,
    /// A correction already stored under the request's id, with its data, if any.
    pub same_id: Option<(Correction, String)>,
    /// An amend's target: what the stored meters read from its data.
    pub target: Vec<Reading>,
    /// What an earlier attempt under the request's id left without its correction row (read
    /// only when `same_id` is `None`).
    pub leftover: Leftover,
}

/// The rows an attempt that failed before its correction row left under a correction id: its
/// deltas (of any event and revision) and its amended data.
///
/// Readers count the deltas of (customer, correction id, revision) once a correction row
/// names that revision, whichever event the deltas are of, one row per (meter, group,
/// window). So a request under that id may write its row only when every leftover is of its
/// event, every leftover data is its data, and the leftover deltas of its revision are
/// exactly its deltas: it then completes the attempt. Deltas of another revision never count
/// (no row of this id will ever name that revision).
#[derive(Debug, Clone, Default)]
pub struct Leftover {
    pub deltas: Vec<Delta>,
    pub data: Vec<String>,
}

impl Leftover {
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty() && self.data.is_empty()
    }
}

/// What a delta changes, without when it was written: two attempts wrote the same delta when
/// these are equal.
fn effect(d: &Delta) -> impl Ord + '_ {
    (
        (d.agent.as_str(), d.event_id.as_str(), d.revision),
        (
            d.meter.as_str(),
            d.aggregation.as_str(),
            d.group_key.as_str(),
        ),
        (
            d.window_start,
            d.window_secs,
            &d.group_names,
            &d.group_values,
        ),
        (d.events, d.value.normalize()),
    )
}

/// Refuses `correction` with `deltas` and `data` when what an earlier attempt under its id
/// left is not exactly what it writes (see [`Leftover`]).
fn matches_leftover(
    leftover: &Leftover,
    correction: &Correction,
    deltas: &[Delta],
    data: &str,
) -> Result<(), CorrectionError> {
    let exists = || CorrectionError::CorrectionExists(correction.correction_id.clone());
    let other_event = leftover
        .deltas
        .iter()
        .any(|d| d.agent != correction.agent || d.event_id != correction.event_id);
    if other_event || leftover.data.iter().any(|d| d != data) {
        return Err(exists());
    }
    let mut left: Vec<_> = leftover
        .deltas
        .iter()
        .filter(|d| d.revision == correction.revision)
        .map(effect)
        .collect();
    left.sort();
    left.dedup();
    if left.is_empty() {
        return Ok(());
    }
    let mut ours: Vec<_> = deltas.iter().map(effect).collect();
    ours.sort();
    ours.dedup();
    if left == ours {
        Ok(())
    } else {
        Err(exists())
    }
}

/// What to do with a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The same correction is stored already: append nothing.
    Recorded(Correction),
    /// Append the correction and its deltas.
    Append(Correction, Vec<Delta>),
}

/// The digest of a correction's content: what makes two requests under one id the same
/// correction (the event's identity and time, the kind, the reason, the amended `data`; not
/// the actor, the revision or the time it was made). 32 hex digits of XXH3-128 over the
/// fields, each preceded by its length (no two contents share an encoding). Not a
/// cryptographic hash: it tells contents apart, it authenticates nothing.
pub fn digest(c: &Correction, data: &str) -> String {
    let time = c.event_time_ms.to_string();
    let mut bytes = Vec::new();
    for field in [
        c.customer.as_str(),
        &c.agent,
        &c.event_id,
        &time,
        &c.kind,
        &c.reason,
        data,
    ] {
        bytes.extend_from_slice(&(field.len() as u64).to_le_bytes());
        bytes.extend_from_slice(field.as_bytes());
    }
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// Of stored rows, the order that picks an id's counted content: earliest `created_ms`, then
/// smaller digest, then smaller revision.
fn content_order(c: &Correction) -> (i64, &str, u32) {
    (c.created_ms, c.digest.as_str(), c.revision)
}

/// The content that counts per (customer, correction id): of the rows stored under the id
/// (two API instances racing with one new id may both have stored theirs), the earliest
/// (`created_ms`), ties broken by the smaller [`digest`], then the smaller revision. Depends
/// on the stored rows only, never on the order they are read in, so every reader agrees.
/// `tally_platform::usage::counted_deltas_sql` is the same rule in SQL.
pub fn contents(rows: &[Correction]) -> Vec<&Correction> {
    let mut by_id: BTreeMap<(&str, &str), &Correction> = BTreeMap::new();
    for c in rows {
        let slot = by_id
            .entry((c.customer.as_str(), c.correction_id.as_str()))
            .or_insert(c);
        if content_order(c) < content_order(slot) {
            *slot = c;
        }
    }
    by_id.into_values().collect()
}

/// The row whose content counts for `correction_id` (see [`contents`]).
pub fn content_of<'a>(rows: &'a [Correction], correction_id: &str) -> Option<&'a Correction> {
    rows.iter()
        .filter(|c| c.correction_id == correction_id)
        .min_by(|a, b| content_order(a).cmp(&content_order(b)))
}

/// The corrections that count: of the counted contents ([`contents`]), per revision of an
/// event, the smallest correction id. `rows` may hold several events and every row of an id.
pub fn winners(rows: &[Correction]) -> Vec<&Correction> {
    let mut by_revision: BTreeMap<(&str, &str, u32), &Correction> = BTreeMap::new();
    for c in contents(rows) {
        let slot = by_revision
            .entry((c.agent.as_str(), c.event_id.as_str(), c.revision))
            .or_insert(c);
        if c.correction_id < slot.correction_id {
            *slot = c;
        }
    }
    by_revision.into_values().collect()
}

/// [`winners`] of the event (agent, event id).
pub fn winners_of<'a>(rows: &'a [Correction], agent: &str, event_id: &str) -> Vec<&'a Correction> {
    winners(rows)
        .into_iter()
        .filter(|c| c.agent == agent && c.event_id == event_id)
        .collect()
}

/// The correction that counts for `ours`'s revision of its event.
pub fn winner<'a>(rows: &'a [Correction], ours: &Correction) -> Option<&'a Correction> {
    winners(rows).into_iter().find(|c| {
        c.agent == ours.agent && c.event_id == ours.event_id && c.revision == ours.revision
    })
}

/// The amended data of the stored row `stored`, of the data rows stored under its id (one
/// per content written): the one whose [`digest`] with the row is the row's; for a row
/// written before digests, the first.
pub fn data_of(stored: &Correction, data: &[String]) -> String {
    if stored.digest.is_empty() {
        return data.first().cloned().unwrap_or_default();
    }
    data.iter()
        .find(|d| digest(stored, d) == stored.digest)
        .cloned()
        .unwrap_or_default()
}

/// What `meters` read from an amended event of `event_type` with `data`, in `window`
/// (start, seconds): the amend's target (pure).
pub fn amended(
    meters: &[Meter],
    event_type: &str,
    data: &RawValue,
    window: (u32, u32),
) -> Result<Vec<Reading>, CorrectionError> {
    let view = DataView::new(data).map_err(|e| invalid("data", e))?;
    let mut out = Vec::new();
    for m in meters.iter().filter(|m| m.event_type == event_type) {
        let r = m
            .read(&view)
            .map_err(|e| CorrectionError::InvalidQuantity {
                meter: m.slug.to_string(),
                detail: e.to_string(),
            })?;
        let names: Vec<String> = m.group_by.iter().map(|(n, _)| n.clone()).collect();
        out.push(Reading {
            meter: m.slug.to_string(),
            aggregation: m.aggregation.as_str().to_owned(),
            window_start: window.0,
            window_secs: window.1,
            group_key: tally_domain::meter::group_key(&names, &r.group_values),
            group_names: names,
            group_values: r.group_values,
            value: r.value,
            events: 1,
        });
    }
    Ok(out)
}

type Key = (String, String, u32);

fn key(r: &Reading) -> Key {
    (r.meter.clone(), r.group_key.clone(), r.window_start)
}

/// The event's current readings: committed plus counted deltas, per (meter, group, window).
fn current(facts: &Facts) -> BTreeMap<Key, Reading> {
    let mut out: BTreeMap<Key, Reading> = BTreeMap::new();
    for r in facts.readings.iter().chain(&facts.deltas) {
        match out.get_mut(&key(r)) {
            Some(c) => {
                c.value += r.value;
                c.events += r.events;
            }
            None => {
                out.insert(key(r), r.clone());
            }
        }
    }
    out.retain(|_, r| r.events > 0 || !r.value.is_zero());
    out
}

/// Refuses a stored id reused for other content, a voided event, an unknown one.
fn refuse(req: &Valid, facts: &Facts) -> Result<Option<Correction>, CorrectionError> {
    if let Some((stored, data)) = &facts.same_id {
        let same = stored.agent == req.agent.as_str()
            && stored.event_id == req.event_id.as_str()
            && stored.event_time_ms == req.time_ms
            && stored.kind == req.change.kind()
            && stored.reason == req.reason
            && data == req.change.data();
        return if same {
            Ok(Some(stored.clone()))
        } else {
            Err(CorrectionError::CorrectionExists(
                stored.correction_id.clone(),
            ))
        };
    }
    let counted = winners_of(&facts.of_event, req.agent.as_str(), req.event_id.as_str());
    if let Some(v) = counted.iter().find(|c| c.kind == "void") {
        return Err(CorrectionError::AlreadyVoided {
            by: v.correction_id.clone(),
        });
    }
    // an imported event (docs/INGEST.md "Backfill") counts by its backfill's deltas
    let imported = counted.iter().any(|c| c.kind == BACKFILL_KIND);
    if facts.readings.is_empty() && !imported {
        return Err(CorrectionError::EventNotFound {
            customer: req.customer.to_string(),
            agent: req.agent.to_string(),
            event_id: req.event_id.to_string(),
        });
    }
    Ok(None)
}

/// Decides a correction from the stored facts (pure): see the module docs.
pub fn decide(
    req: &Valid,
    facts: &Facts,
    actor: &str,
    now_ms: i64,
) -> Result<Decision, CorrectionError> {
    if let Some(stored) = refuse(req, facts)? {
        return Ok(Decision::Recorded(stored));
    }
    let now = current(facts);
    let target: BTreeMap<Key, &Reading> = match req.change {
        Change::Void => BTreeMap::new(),
        Change::Amend(_) => facts.target.iter().map(|r| (key(r), r)).collect(),
    };
    if let Some(r) = now
        .values()
        .chain(target.values().copied())
        .find(|r| r.aggregation != "SUM")
    {
        return Err(CorrectionError::NotCorrectable {
            meter: r.meter.clone(),
            aggregation: r.aggregation.clone(),
        });
    }
    let counted = winners_of(&facts.of_event, req.agent.as_str(), req.event_id.as_str());
    let revision = counted.iter().map(|c| c.revision).max().unwrap_or(0) + 1;
    let mut correction = Correction {
        correction_id: req.correction_id.to_string(),
        customer: req.customer.to_string(),
        agent: req.agent.to_string(),
        event_id: req.event_id.to_string(),
        event_time_ms: req.time_ms,
        revision,
        kind: req.change.kind().into(),
        actor: actor.to_owned(),
        reason: req.reason.clone(),
        created_ms: now_ms,
        created_at: datetime_secs(now_ms),
        digest: String::new(),
    };
    correction.digest = digest(&correction, req.change.data());
    let mut keys: Vec<&Key> = now.keys().chain(target.keys()).collect();
    keys.sort();
    keys.dedup();
    let deltas = keys
        .into_iter()
        .filter_map(|k| {
            let (was, will) = (now.get(k), target.get(k).copied());
            let shape = will.or(was)?;
            let value =
                will.map_or(Decimal::ZERO, |r| r.value) - was.map_or(Decimal::ZERO, |r| r.value);
            let events = will.map_or(0, |r| r.events) - was.map_or(0, |r| r.events);
            (!value.is_zero() || events != 0).then(|| delta(&correction, shape, value, events))
        })
        .collect::<Vec<_>>();
    matches_leftover(&facts.leftover, &correction, &deltas, req.change.data())?;
    Ok(Decision::Append(correction, deltas))
}

fn delta(c: &Correction, shape: &Reading, value: Decimal, events: i64) -> Delta {
    Delta {
        correction_id: c.correction_id.clone(),
        customer: c.customer.clone(),
        agent: c.agent.clone(),
        event_id: c.event_id.clone(),
        revision: c.revision,
        meter: shape.meter.clone(),
        aggregation: shape.aggregation.clone(),
        window_start: shape.window_start,
        window_secs: shape.window_secs,
        group_names: shape.group_names.clone(),
        group_values: shape.group_values.clone(),
        group_key: shape.group_key.clone(),
        events,
        value,
        created_at: c.created_at,
        digest: c.digest.clone(),
    }
}

#[cfg(test)]
mod tests;
