//! Recording invoice lifecycle transitions (draft → finalized → paid / void / uncollectible)
//! as append-only rows in `invoice_transitions`, each with the actor and the reason, and
//! reading an invoice's history and current status back.
//!
//! The rules (which transitions exist, how concurrent records resolve) live in
//! [`tally_domain::invoice_status`]; this module only reads and appends. It never updates or
//! deletes a row. Recording a status the invoice already has is a no-op that returns the
//! existing record, so retries (a webhook delivered twice, a rerun) change nothing.

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::invoice_status::{fold, InvoiceStatus, StatusError};
use tally_platform::store::datetime_secs;

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub transition_id: String,
    pub invoice_id: String,
    pub seq: u32,
    pub from: InvoiceStatus,
    pub to: InvoiceStatus,
    /// Who or what caused it, e.g. `invoicer`, `payments:stripe`, `api:alice`.
    pub actor: String,
    pub reason: String,
    pub at_ms: i64,
}

/// What [`record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new transition was appended.
    Applied(Transition),
    /// The invoice already had that status; nothing was appended.
    Already(Transition),
}

impl Recorded {
    pub fn transition(&self) -> &Transition {
        match self {
            Recorded::Applied(t) | Recorded::Already(t) => t,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("invoice {invoice_id}: {source}")]
    Status {
        invoice_id: String,
        #[source]
        source: StatusError,
    },
    #[error("invoice {invoice_id}: stored status {value:?} is unknown")]
    Corrupt { invoice_id: String, value: String },
    #[error("clickhouse: {0}")]
    Store(#[from] clickhouse::error::Error),
}

#[derive(clickhouse::Row, Deserialize)]
struct TransitionRow {
    transition_id: String,
    invoice_id: String,
    seq: u32,
    from_status: String,
    to_status: String,
    actor: String,
    reason: String,
    at_ms: i64,
}

#[derive(clickhouse::Row, Serialize)]
struct NewRow<'a> {
    transition_id: &'a str,
    invoice_id: &'a str,
    seq: u32,
    from_status: &'a str,
    to_status: &'a str,
    actor: &'a str,
    reason: &'a str,
    at_ms: i64,
    at: u32,
}

/// The deterministic id of the transition of `invoice_id` to `to` (each status is reached at
/// most once per invoice).
pub fn transition_id(invoice_id: &str, to: InvoiceStatus) -> String {
    format!("{invoice_id}:{to}")
}

/// Every recorded transition of the invoice, oldest first (by time, then sequence). Records
/// that lost a race are included; [`status`] skips them.
pub async fn history(db: &Client, invoice_id: &str) -> Result<Vec<Transition>, LifecycleError> {
    let rows: Vec<TransitionRow> = db
        .query(
            "SELECT transition_id, invoice_id, seq, from_status, to_status, actor, reason, at_ms \
             FROM v_invoice_transitions WHERE invoice_id = ? ORDER BY at_ms, seq, transition_id",
        )
        .bind(invoice_id)
        .fetch_all()
        .await?;
    rows.into_iter().map(parse_row).collect()
}

fn parse_row(r: TransitionRow) -> Result<Transition, LifecycleError> {
    let parse = |v: &str| {
        v.parse::<InvoiceStatus>()
            .map_err(|_| LifecycleError::Corrupt {
                invoice_id: r.invoice_id.clone(),
                value: v.to_owned(),
            })
    };
    Ok(Transition {
        from: parse(&r.from_status)?,
        to: parse(&r.to_status)?,
        transition_id: r.transition_id,
        invoice_id: r.invoice_id,
        seq: r.seq,
        actor: r.actor,
        reason: r.reason,
        at_ms: r.at_ms,
    })
}

/// The status the history leads to (`draft` when nothing was recorded).
pub fn status_of(history: &[Transition]) -> InvoiceStatus {
    fold(InvoiceStatus::Draft, history.iter().map(|t| t.to))
}

/// The invoice's current status (`draft` when nothing was recorded).
pub async fn status(db: &Client, invoice_id: &str) -> Result<InvoiceStatus, LifecycleError> {
    Ok(status_of(&history(db, invoice_id).await?))
}

/// Moves the invoice to `to`, appending one record; refused with [`LifecycleError::Status`]
/// when the lifecycle does not allow it from the current status. Recording the current status
/// again returns [`Recorded::Already`] without appending.
pub async fn record(
    db: &Client,
    invoice_id: &str,
    to: InvoiceStatus,
    actor: &str,
    reason: &str,
    at_ms: i64,
) -> Result<Recorded, LifecycleError> {
    let past = history(db, invoice_id).await?;
    let current = status_of(&past);
    if current == to {
        if let Some(t) = past.iter().rev().find(|t| t.to == to) {
            return Ok(Recorded::Already(t.clone()));
        }
    }
    current.check(to).map_err(|source| LifecycleError::Status {
        invoice_id: invoice_id.to_owned(),
        source,
    })?;
    let t = Transition {
        transition_id: transition_id(invoice_id, to),
        invoice_id: invoice_id.to_owned(),
        seq: u32::try_from(past.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1),
        from: current,
        to,
        actor: actor.to_owned(),
        reason: reason.to_owned(),
        at_ms,
    };
    let mut insert = db.insert::<NewRow<'_>>("invoice_transitions").await?;
    insert
        .write(&NewRow {
            transition_id: &t.transition_id,
            invoice_id: &t.invoice_id,
            seq: t.seq,
            from_status: t.from.as_str(),
            to_status: t.to.as_str(),
            actor: &t.actor,
            reason: &t.reason,
            at_ms: t.at_ms,
            at: datetime_secs(t.at_ms),
        })
        .await?;
    insert.end().await?;
    Ok(Recorded::Applied(t))
}

/// Appends `draft → finalized` for invoices just finalized by the invoicer, in one insert,
/// without reading first: the transition id is deterministic, so an invoice finalized again
/// (a rerun, a racing instance) collapses to its earliest record in the view. Only for
/// invoices that had no transition yet (the invoicer's own finalization).
pub async fn record_finalized(
    db: &Client,
    invoice_ids: &[String],
    actor: &str,
    reason: &str,
    at_ms: i64,
) -> Result<(), LifecycleError> {
    if invoice_ids.is_empty() {
        return Ok(());
    }
    let mut insert = db.insert::<NewRow<'_>>("invoice_transitions").await?;
    for id in invoice_ids {
        let transition_id = transition_id(id, InvoiceStatus::Finalized);
        insert
            .write(&NewRow {
                transition_id: &transition_id,
                invoice_id: id,
                seq: 1,
                from_status: InvoiceStatus::Draft.as_str(),
                to_status: InvoiceStatus::Finalized.as_str(),
                actor,
                reason,
                at_ms,
                at: datetime_secs(at_ms),
            })
            .await?;
    }
    insert.end().await?;
    Ok(())
}

/// Ids of invoices whose finalization was recorded at or after `since_ms`.
pub async fn finalized_since(
    db: &Client,
    since_ms: i64,
) -> Result<std::collections::HashSet<String>, LifecycleError> {
    let ids: Vec<String> = db
        .query(
            "SELECT DISTINCT invoice_id FROM invoice_transitions \
             WHERE to_status = 'finalized' AND at_ms >= ?",
        )
        .bind(since_ms)
        .fetch_all()
        .await?;
    Ok(ids.into_iter().collect())
}
