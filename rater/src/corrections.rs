//! Corrections of committed events: voiding an event, named by its identity (customer,
//! source, id), after the aggregator committed it, with an actor and a reason.
//!
//! It owns the correction's rules and its storage (migration 0060): what a void takes away
//! (minus each of the event's committed meter readings, looked up in `usage_meter_readings`
//! by the event's identity and time, so the caller never states quantities), when one is
//! refused (no such committed event, a meter that is not a SUM, an event already voided, a
//! correction id reused for something else), and appending the correction
//! (`usage_corrections`) and its deltas (`usage_correction_deltas`). Billing reads add the
//! deltas to usage (`tally_platform::usage`), so the rater's next pass recomputes the
//! period's charges and the invoicer's late-usage path turns a lowered charge of a finalized
//! invoice into a credit note naming the correction (`tally_invoicer::late`).
//!
//! Exactly once: a correction's identity is (customer, correction id). Re-sending the same
//! correction finds it stored and appends nothing; a different correction for an event that a
//! counted correction already voided is refused (`already_voided`). Two racing corrections of
//! the same event both reach storage at most as revision n of that event, and only the one
//! with the smallest correction id counts, for every reader; the API answers the other
//! `correction_conflict` after it re-reads (see [`winner`]). Deltas written twice (a retried
//! insert) count once: readers take one row per (correction, meter, group, window).
//!
//! The shape is "load the facts ([`load`]), decide in a pure function ([`decide`]), append
//! ([`append`])". Docs: docs/INGEST.md, "Corrections".

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{AgentId, CustomerId, EventId};
use tally_platform::store::{datetime_secs, dec9};

/// Longest reason accepted, in bytes.
pub const REASON_MAX_BYTES: usize = 1024;

/// How far before the event time its window may start: the aggregator's largest window.
const WINDOW_MAX_SECS: i64 = 86_400;

/// A void as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidRequest {
    /// The correction's own id, chosen by the caller: re-sending it is safe.
    pub correction_id: String,
    /// `void` (the only kind so far).
    pub kind: String,
    pub customer: String,
    /// The event's `source` (agent).
    pub source: String,
    /// The event's `id`.
    pub id: String,
    /// The event's `time` (RFC 3339): bounds the lookup of its readings.
    pub time: String,
    pub reason: String,
}

/// A validated void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Void {
    pub correction_id: EventId,
    pub customer: CustomerId,
    pub agent: AgentId,
    pub event_id: EventId,
    pub time_ms: i64,
    pub reason: String,
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
}

impl CorrectionError {
    /// The stable code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            CorrectionError::Invalid { .. } => "invalid_correction",
            CorrectionError::EventNotFound { .. } => "event_not_found",
            CorrectionError::NotCorrectable { .. } => "not_correctable",
            CorrectionError::AlreadyVoided { .. } => "already_voided",
            CorrectionError::CorrectionExists(_) => "correction_exists",
            CorrectionError::Conflict { .. } => "correction_conflict",
            CorrectionError::ClickHouse(_) => "unavailable",
        }
    }
}

fn invalid(field: &'static str, detail: impl ToString) -> CorrectionError {
    CorrectionError::Invalid {
        field,
        detail: detail.to_string(),
    }
}

impl VoidRequest {
    /// Checks every field (ids as the event contract has them).
    pub fn validate(self) -> Result<Void, CorrectionError> {
        if self.kind != "void" {
            return Err(invalid("kind", format!("{:?}: only \"void\"", self.kind)));
        }
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
        Ok(Void {
            correction_id: EventId::new(self.correction_id)
                .map_err(|e| invalid("correction_id", e))?,
            customer: CustomerId::new(self.customer).map_err(|e| invalid("customer", e))?,
            agent: AgentId::new(self.source).map_err(|e| invalid("source", e))?,
            event_id: EventId::new(self.id).map_err(|e| invalid("id", e))?,
            time_ms,
            reason,
        })
    }
}

/// One committed meter reading of the corrected event.
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
}

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
}

/// One delta row: what a correction changes in one (meter, group, window).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize)]
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
}

/// What is stored about the corrected event and the correction's id.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The event's committed readings (empty: no such committed event).
    pub readings: Vec<Reading>,
    /// Every correction recorded for the event, counted or not.
    pub of_event: Vec<Correction>,
    /// A correction already stored under the request's id, if any.
    pub same_id: Option<Correction>,
}

/// What to do with a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The same correction is stored already: append nothing.
    Recorded(Correction),
    /// Append the correction and its deltas.
    Append(Correction, Vec<Delta>),
}

/// The corrections that count: per revision of an event, the smallest correction id.
pub fn winners(of_event: &[Correction]) -> Vec<&Correction> {
    let mut by_revision: std::collections::BTreeMap<u32, &Correction> = Default::default();
    for c in of_event {
        let slot = by_revision.entry(c.revision).or_insert(c);
        if c.correction_id < slot.correction_id {
            *slot = c;
        }
    }
    by_revision.into_values().collect()
}

/// The correction that counts for `ours`'s revision of its event.
pub fn winner<'a>(of_event: &'a [Correction], ours: &Correction) -> Option<&'a Correction> {
    winners(of_event)
        .into_iter()
        .find(|c| c.revision == ours.revision)
}

/// Decides a void from the stored facts (pure): see the module docs.
pub fn decide(
    void: &Void,
    facts: &Facts,
    actor: &str,
    now_ms: i64,
) -> Result<Decision, CorrectionError> {
    if let Some(stored) = &facts.same_id {
        let same = stored.agent == void.agent.as_str()
            && stored.event_id == void.event_id.as_str()
            && stored.event_time_ms == void.time_ms
            && stored.kind == "void"
            && stored.reason == void.reason;
        return if same {
            Ok(Decision::Recorded(stored.clone()))
        } else {
            Err(CorrectionError::CorrectionExists(
                stored.correction_id.clone(),
            ))
        };
    }
    let counted = winners(&facts.of_event);
    if let Some(v) = counted.iter().find(|c| c.kind == "void") {
        return Err(CorrectionError::AlreadyVoided {
            by: v.correction_id.clone(),
        });
    }
    if facts.readings.is_empty() {
        return Err(CorrectionError::EventNotFound {
            customer: void.customer.to_string(),
            agent: void.agent.to_string(),
            event_id: void.event_id.to_string(),
        });
    }
    if let Some(r) = facts.readings.iter().find(|r| r.aggregation != "SUM") {
        return Err(CorrectionError::NotCorrectable {
            meter: r.meter.clone(),
            aggregation: r.aggregation.clone(),
        });
    }
    let revision = counted.iter().map(|c| c.revision).max().unwrap_or(0) + 1;
    let correction = Correction {
        correction_id: void.correction_id.to_string(),
        customer: void.customer.to_string(),
        agent: void.agent.to_string(),
        event_id: void.event_id.to_string(),
        event_time_ms: void.time_ms,
        revision,
        kind: "void".into(),
        actor: actor.to_owned(),
        reason: void.reason.clone(),
        created_ms: now_ms,
        created_at: datetime_secs(now_ms),
    };
    let deltas = facts
        .readings
        .iter()
        .map(|r| Delta {
            correction_id: correction.correction_id.clone(),
            customer: correction.customer.clone(),
            agent: correction.agent.clone(),
            event_id: correction.event_id.clone(),
            revision,
            meter: r.meter.clone(),
            aggregation: r.aggregation.clone(),
            window_start: r.window_start,
            window_secs: r.window_secs,
            group_names: r.group_names.clone(),
            group_values: r.group_values.clone(),
            group_key: r.group_key.clone(),
            events: -1,
            value: -r.value,
            created_at: datetime_secs(now_ms),
        })
        .collect();
    Ok(Decision::Append(correction, deltas))
}

const CORRECTION_COLUMNS: &str = "correction_id, customer, agent, event_id, event_time_ms, \
    revision, kind, actor, reason, created_ms, toUInt32(created_at)";

/// Loads the facts a void is decided on: the event's committed readings (bounded by its
/// time on the readings' sorting key), its corrections, and the request id's correction.
pub async fn load(db: &Client, void: &Void) -> Result<Facts, CorrectionError> {
    let secs = void.time_ms.div_euclid(1000);
    let readings = db
        .query(
            "SELECT meter, aggregation, toUInt32(window_start), window_secs, group_names, \
                    group_values, group_key, value \
             FROM usage_meter_readings \
             WHERE toStartOfHour(window_start) >= toStartOfHour(toDateTime(?)) \
               AND toStartOfHour(window_start) <= toStartOfHour(toDateTime(?)) \
               AND customer = ? AND agent = ? AND event_id = ? AND time_ms = ? \
               AND batch_id NOT IN (SELECT batch_id FROM usage_aborts) \
             LIMIT 1 BY meter",
        )
        .bind(secs - WINDOW_MAX_SECS)
        .bind(secs)
        .bind(void.customer.as_str())
        .bind(void.agent.as_str())
        .bind(void.event_id.as_str())
        .bind(void.time_ms)
        .fetch_all::<Reading>()
        .await?;
    let of_event = of_event(
        db,
        void.customer.as_str(),
        void.agent.as_str(),
        void.event_id.as_str(),
    )
    .await?;
    let same_id = db
        .query(&format!(
            "SELECT {CORRECTION_COLUMNS} FROM usage_corrections \
             WHERE customer = ? AND correction_id = ? ORDER BY created_ms LIMIT 1"
        ))
        .bind(void.customer.as_str())
        .bind(void.correction_id.as_str())
        .fetch_optional::<Correction>()
        .await?;
    Ok(Facts {
        readings,
        of_event,
        same_id,
    })
}

/// Every correction recorded for an event, oldest first.
pub async fn of_event(
    db: &Client,
    customer: &str,
    agent: &str,
    event_id: &str,
) -> Result<Vec<Correction>, clickhouse::error::Error> {
    db.query(&format!(
        "SELECT {CORRECTION_COLUMNS} FROM usage_corrections \
         WHERE customer = ? AND agent = ? AND event_id = ? \
         ORDER BY revision, correction_id, created_ms LIMIT 1 BY correction_id"
    ))
    .bind(customer)
    .bind(agent)
    .bind(event_id)
    .fetch_all()
    .await
}

/// A customer's corrections (each once, counted or not), oldest first.
pub async fn of_customer(
    db: &Client,
    customer: &str,
) -> Result<Vec<Correction>, clickhouse::error::Error> {
    db.query(&format!(
        "SELECT {CORRECTION_COLUMNS} FROM usage_corrections WHERE customer = ? \
         ORDER BY created_ms, correction_id LIMIT 1 BY correction_id"
    ))
    .bind(customer)
    .fetch_all()
    .await
}

/// Appends a correction: its deltas first, then the correction row (a delta without its
/// correction row never counts: readers take deltas only of recorded corrections).
pub async fn append(
    db: &Client,
    correction: &Correction,
    deltas: &[Delta],
) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<Delta>("usage_correction_deltas").await?;
    for d in deltas {
        insert.write(d).await?;
    }
    insert.end().await?;
    let mut insert = db.insert::<Correction>("usage_corrections").await?;
    insert.write(correction).await?;
    insert.end().await
}

/// Records a void made by `actor` at `now_ms`: loads, decides, appends, then re-reads the
/// event's corrections so that a correction that lost a race is answered as such. Returns the
/// correction that counts and whether this call appended it.
pub async fn void(
    db: &Client,
    void: &Void,
    actor: &str,
    now_ms: i64,
) -> Result<(Correction, bool), CorrectionError> {
    let facts = load(db, void).await?;
    let (ours, appended) = match decide(void, &facts, actor, now_ms)? {
        Decision::Recorded(c) => (c, false),
        Decision::Append(c, deltas) => {
            append(db, &c, &deltas).await?;
            (c, true)
        }
    };
    let after = of_event(db, &ours.customer, &ours.agent, &ours.event_id).await?;
    match winner(&after, &ours) {
        Some(w) if w.correction_id != ours.correction_id => Err(CorrectionError::Conflict {
            ours: ours.correction_id,
            winner: w.correction_id.clone(),
        }),
        _ => Ok((ours, appended)),
    }
}
