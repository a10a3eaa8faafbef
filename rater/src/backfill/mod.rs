//! Backfill: importing historical usage events for named periods, exactly once, after the
//! live path has closed on them (a customer migrating from another biller, the too-late
//! events of an outage re-played from the dead-letter stream).
//!
//! It owns the import's rules (pure; the storage is [`crate::store::backfill`], the entry
//! points `POST /v1/backfill` and `tally-rater backfill`): which events of an import count and
//! why the others do not. An imported event is a correction of kind `backfill` of the event's
//! identity (customer, source, id) whose deltas are what the stored meters read from it (the
//! aggregator's reading code, [`tally_domain::Meter::read`]) in its minute
//! ([`WINDOW_SECS`]). Every usage read adds those deltas (`tally_platform::usage`), so the
//! rater re-prices the period and the invoicer bills it (an adjustment or a credit note where
//! the period is finalized), exactly as for a void or an amend.
//!
//! Exactly once: the correction id is derived from the import id and the event's identity
//! ([`correction_id`]), so re-running an import finds its corrections stored and appends
//! nothing; an event already committed by the aggregator, or imported by another import,
//! is reported `already_present`. Both are matched by identity, never by time (the time is
//! not part of an event's identity): a live commit counts when its event time is within
//! the aggregator's dedup horizon of the imported event's, either side ([`HORIZON_SECS`],
//! [`committed_within`]); an earlier import of the identity counts at any time. Two imports racing for one event both reach storage as
//! revision 1 of it and only the smallest correction id counts (the corrections' rule,
//! [`crate::corrections::winners`]).
//!
//! Refused, each reported with its reason and never failing the rest of the import: an
//! event outside the named period, one newer than [`LIVE_SECS`] (the live path may still
//! deliver it), a type no meter selects, data a meter cannot read, a meter that is neither a
//! SUM nor a COUNT (their usage does not add up from deltas). It never writes usage tables
//! of the aggregator and never prices anything.
//! Docs: docs/INGEST.md, "Backfill".

use std::collections::BTreeMap;

use serde::Serialize;
use tally_domain::event::UsageEvent;
use tally_domain::Meter;
use tally_platform::store::datetime_secs;

use crate::corrections::{self, Correction, CorrectionError, Delta, Reading};

/// The window an imported event lands in: its minute (a window of the aggregator's default
/// size; any window that divides a day bills exactly).
pub const WINDOW_SECS: u32 = 60;

/// Events newer than this (seconds before the import) are refused `too_recent`: the live
/// path may still deliver them (the aggregator's allowed lateness must stay below it).
pub const LIVE_SECS: i64 = 86_400;

/// How far apart, in event time, a live commit and an imported event of one identity may be
/// for the import to find the identity already present: the aggregator's dedup horizon
/// (`aggregator.dedup_horizon_secs`, its default here; an importer is given another with
/// [`crate::store::backfill::Importer::set_horizon_secs`]). The live path itself only
/// deduplicates a re-send within that horizon (of received time), so a copy of an identity
/// further away than it is counted again by the live path too, and by an import.
pub const HORIZON_SECS: i64 = 86_400;

/// Whether an identity committed live at the event times `committed_ms` is present for an
/// imported event of that identity at `time_ms` (pure): a commit at most `horizon_secs`
/// before or after it (bounds included).
pub fn committed_within(committed_ms: &[i64], time_ms: i64, horizon_secs: i64) -> bool {
    let horizon_ms = u64::try_from(horizon_secs.saturating_mul(1000)).unwrap_or(0);
    committed_ms
        .iter()
        .any(|t| t.abs_diff(time_ms) <= horizon_ms)
}

/// The correction kind of an imported event.
pub const KIND: &str = corrections::BACKFILL_KIND;

/// An import as its caller names it.
#[derive(Debug, Clone)]
pub struct Import {
    /// `[A-Za-z0-9_-]{1,64}`: re-running an import under the same id changes nothing.
    pub import_id: String,
    /// The named period: events at `from_ms <= time < to_ms` are imported.
    pub from_ms: i64,
    pub to_ms: i64,
    pub reason: String,
    pub actor: String,
    pub now_ms: i64,
}

/// Why an import as a whole is refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("field {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
}

impl Import {
    /// Checks the import's own fields.
    pub fn validate(&self) -> Result<(), ImportError> {
        let invalid = |field, detail: &str| ImportError::Invalid {
            field,
            detail: detail.to_owned(),
        };
        let id_ok = !self.import_id.is_empty()
            && self.import_id.len() <= 64
            && self
                .import_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(invalid("import_id", "[A-Za-z0-9_-]{1,64}"));
        }
        let reason = self.reason.trim();
        if reason.is_empty() || reason.len() > corrections::REASON_MAX_BYTES {
            return Err(invalid("reason", "1 to 1024 bytes, not blank"));
        }
        if self.from_ms >= self.to_ms {
            return Err(invalid("to", "the named period must end after it starts"));
        }
        Ok(())
    }
}

/// The correction id of `event` in import `import_id`: `bf:<import_id>:<hash of the
/// identity>`, the same on every run of the import (the form
/// [`tally_domain::identity::backfill_import`] reads).
pub fn correction_id(import_id: &str, event: &UsageEvent) -> String {
    let identity = format!(
        "{}\u{0}{}\u{0}{}",
        event.customer.as_str(),
        event.agent.as_str(),
        event.id.as_str()
    );
    format!(
        "bf:{import_id}:{:016x}",
        xxhash_rust::xxh3::xxh3_64(identity.as_bytes())
    )
}

/// The import a backfill correction id names (`None`: not a backfill's id).
pub fn import_of(correction_id: &str) -> Option<&str> {
    tally_domain::identity::backfill_import(correction_id)
}

/// What the stored meters read from `event`, in its minute (pure): the import's target.
pub fn readings(meters: &[Meter], event: &UsageEvent) -> Result<Vec<Reading>, Refusal> {
    let secs = u32::try_from(event.time_ms.div_euclid(1000)).map_err(|_| Refusal {
        code: "outside_period",
        detail: "event time out of range".into(),
    })?;
    let window = (secs - secs % WINDOW_SECS, WINDOW_SECS);
    let read = corrections::amended(meters, &event.event_type, &event.data, window).map_err(
        |e| match e {
            CorrectionError::InvalidQuantity { .. } => Refusal {
                code: "invalid_quantity",
                detail: e.to_string(),
            },
            other => Refusal {
                code: "malformed",
                detail: other.to_string(),
            },
        },
    )?;
    if read.is_empty() {
        return Err(Refusal {
            code: "unknown_meter",
            detail: format!("no meter selects event type {:?}", event.event_type),
        });
    }
    Ok(read)
}

/// What is stored about one imported event.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The aggregator committed the event's identity at a time within the dedup horizon of
    /// the event's ([`committed_within`]; its readings are in `usage_meter_readings`).
    pub committed: bool,
    /// Every correction recorded for the event (an earlier import is one of kind `backfill`).
    pub of_event: Vec<Correction>,
    /// The correction stored under this import's id for the event, if any.
    pub same_id: Option<Correction>,
    /// What the stored meters read from the event (or why they cannot).
    pub target: Result<Vec<Reading>, Refusal>,
}

/// Why one event of an import does not count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// `outside_period`, `too_recent`, `unknown_meter`, `invalid_quantity`, `malformed`,
    /// `subject_mismatch`, `not_importable`, `correction_exists` (the derived id names a
    /// correction of another identity or kind). An identity repeated in the input, at any
    /// time, is not refused: it is `already_present`.
    pub code: &'static str,
    pub detail: String,
}

/// Why an event is already present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Present {
    /// The aggregator committed it.
    Committed,
    /// A counted backfill correction imported it (this import's on a re-run, or another's).
    Imported(String),
}

/// What to do with one event of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Append(Correction, Vec<Delta>),
    Present(Present),
    Refused(Refusal),
}

fn refused(code: &'static str, detail: impl ToString) -> Decision {
    Decision::Refused(Refusal {
        code,
        detail: detail.to_string(),
    })
}

/// Decides one event of `import` from its stored facts (pure): see the module docs.
pub fn decide(import: &Import, event: &UsageEvent, facts: &Facts) -> Decision {
    let time = event.time_ms;
    if let Some(refusal) = out_of_time(import, time) {
        return refusal;
    }
    let id = correction_id(&import.import_id, event);
    if let Some(stored) = &facts.same_id {
        // the identity, not the time: this import's correction of the identity at another
        // time is the identity imported (present below), not another correction
        let same = stored.kind == KIND
            && stored.customer == event.customer.as_str()
            && stored.agent == event.agent.as_str()
            && stored.event_id == event.id.as_str();
        if !same {
            return refused(
                "correction_exists",
                format!("{id:?} names another correction"),
            );
        }
    }
    if facts.committed {
        return Decision::Present(Present::Committed);
    }
    if let Some(b) = corrections::winners(&facts.of_event)
        .into_iter()
        .find(|c| c.kind == KIND)
    {
        return Decision::Present(Present::Imported(b.correction_id.clone()));
    }
    let target = match &facts.target {
        Ok(t) => t,
        Err(r) => return Decision::Refused(r.clone()),
    };
    if let Some(r) = target
        .iter()
        .find(|r| r.aggregation != "SUM" && r.aggregation != "COUNT")
    {
        return refused(
            "not_importable",
            format!(
                "meter {:?} aggregates by {}; only SUM and COUNT meters can be imported",
                r.meter, r.aggregation
            ),
        );
    }
    let revision = facts.of_event.iter().map(|c| c.revision).max().unwrap_or(0) + 1;
    let correction = Correction {
        correction_id: id,
        customer: event.customer.to_string(),
        agent: event.agent.to_string(),
        event_id: event.id.to_string(),
        event_time_ms: time,
        revision,
        kind: KIND.into(),
        actor: import.actor.clone(),
        reason: import.reason.trim().to_owned(),
        created_ms: import.now_ms,
        created_at: datetime_secs(import.now_ms),
        // an import's rows keep the digest of rows written before digests: its id is derived
        // from the identity, and a re-run finds it stored (`same_id` above)
        digest: String::new(),
    };
    let deltas = deltas(&correction, target);
    Decision::Append(correction, deltas)
}

/// The refusal of an event at `time` outside the named period, or too recent for an import.
fn out_of_time(import: &Import, time: i64) -> Option<Decision> {
    if time < import.from_ms || time >= import.to_ms {
        return Some(refused(
            "outside_period",
            format!(
                "event time {time} ms is outside the named period [{}, {}) ms",
                import.from_ms, import.to_ms
            ),
        ));
    }
    if time > import.now_ms.saturating_sub(LIVE_SECS * 1000) {
        return Some(refused(
            "too_recent",
            format!("events of the last {LIVE_SECS} s go through the live path"),
        ));
    }
    None
}

/// The deltas `correction` appends: one per reading of the event, one event each.
fn deltas(correction: &Correction, target: &[Reading]) -> Vec<Delta> {
    target
        .iter()
        .map(|r| Delta {
            correction_id: correction.correction_id.clone(),
            customer: correction.customer.clone(),
            agent: correction.agent.clone(),
            event_id: correction.event_id.clone(),
            revision: correction.revision,
            meter: r.meter.clone(),
            aggregation: r.aggregation.clone(),
            window_start: r.window_start,
            window_secs: r.window_secs,
            group_names: r.group_names.clone(),
            group_values: r.group_values.clone(),
            group_key: r.group_key.clone(),
            events: 1,
            value: r.value,
            created_at: correction.created_at,
            digest: correction.digest.clone(),
        })
        .collect()
}

/// What an import did: counts, and the refusals by reason with the first few examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub import_id: String,
    /// Events read from the input.
    pub events: u64,
    /// Events this run imported.
    pub imported: u64,
    /// Events already counted: committed live, or imported (by an earlier run or import).
    pub already_present: u64,
    /// Refused events per reason code.
    pub refused: BTreeMap<String, u64>,
    /// The first [`EXAMPLES_MAX`] refusals, with where they were in the input.
    pub examples: Vec<Example>,
}

/// How many refusals a report shows in full.
pub const EXAMPLES_MAX: usize = 20;

/// One refused event in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// Its position in the input (0-based line or array index, or stream sequence).
    pub at: u64,
    /// `source/id`, when the event could be parsed.
    pub event: String,
    pub code: &'static str,
    pub detail: String,
}

impl Report {
    /// Counts one refusal.
    pub fn refuse(&mut self, at: u64, event: String, r: Refusal) {
        *self.refused.entry(r.code.to_owned()).or_default() += 1;
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(Example {
                at,
                event,
                code: r.code,
                detail: r.detail,
            });
        }
    }
}

#[cfg(test)]
mod tests;
