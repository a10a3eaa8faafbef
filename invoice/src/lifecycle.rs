//! Recording invoice lifecycle transitions (draft → finalized → paid / void / uncollectible)
//! as append-only rows in `invoice_transitions`, each with the actor and the reason, and
//! reading an invoice's history and current status back.
//!
//! The rules (which transitions exist, how concurrent records resolve) live in
//! [`tally_domain::invoice_status`]; this module only reads and appends.
//!
//! One source of truth for an invoice's status: the fold of its transitions ([`status_of`],
//! and [`statuses`] / [`statuses_of`] for many invoices, the same fold), with one rule for the
//! moment between the invoicer storing a finalized document and recording its
//! `draft → finalized` transition ([`current`]); [`record_document_finalized`] closes that gap.
//! Every reader of a status (the invoicer's API, payments, dunning, the portal) goes through
//! these. It never updates or
//! deletes a row. Recording a status the invoice already has is a no-op that returns the
//! existing record, so retries (a webhook delivered twice, a rerun) change nothing.

use std::collections::HashMap;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::invoice_status::{fold, path, InvoiceStatus, StatusError};
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

/// The status the history leads to (`draft` when nothing was recorded): the fold.
pub fn status_of(history: &[Transition]) -> InvoiceStatus {
    fold(InvoiceStatus::Draft, history.iter().map(|t| t.to))
}

/// The status of an invoice whose transitions fold to `recorded`, given whether the invoicer
/// stored its document finalized (`v_invoices.status`): a finalization the lifecycle has not
/// recorded yet (the invoicer stops between the two appends) counts as recorded.
pub fn current(recorded: InvoiceStatus, document_finalized: bool) -> InvoiceStatus {
    if recorded == InvoiceStatus::Draft && document_finalized {
        InvoiceStatus::Finalized
    } else {
        recorded
    }
}

/// Whether the history ever reached `finalized` (and so the invoice was booked), whatever it
/// reached after.
pub fn was_finalized(history: &[Transition]) -> bool {
    path(InvoiceStatus::Draft, history.iter().map(|t| t.to)).contains(&InvoiceStatus::Finalized)
}

/// The invoice's status by [`current`], first recording the invoicer's finalization (as
/// `actor`) when only its document shows it; and whether the invoice was ever finalized.
pub async fn record_document_finalized(
    db: &Client,
    invoice_id: &str,
    document_finalized: bool,
    actor: &str,
    at_ms: i64,
) -> Result<(InvoiceStatus, bool), LifecycleError> {
    let past = history(db, invoice_id).await?;
    let recorded = status_of(&past);
    let status = current(recorded, document_finalized);
    if status != recorded {
        let reason = "finalized in v_invoices by the invoicer";
        record(db, invoice_id, status, actor, reason, at_ms).await?;
        return Ok((status, true));
    }
    Ok((status, was_finalized(&past)))
}

#[derive(clickhouse::Row, Deserialize)]
struct StatusRow {
    invoice_id: String,
    to_status: String,
}

/// The lifecycle status of every invoice with a recorded transition, in one query.
pub async fn statuses(db: &Client) -> Result<HashMap<String, InvoiceStatus>, LifecycleError> {
    let rows: Vec<StatusRow> = db
        .query(
            "SELECT invoice_id, to_status FROM v_invoice_transitions \
             ORDER BY invoice_id, at_ms, seq, transition_id",
        )
        .fetch_all()
        .await?;
    fold_rows(rows)
}

/// The lifecycle status of each of `invoice_ids` that has a recorded transition, reading only
/// their rows (`invoice_transitions` is sorted by invoice id; the view would read all of
/// them on ClickHouse 18.16). The same rows as `v_invoice_transitions`: the earliest record of
/// each transition.
pub async fn statuses_of(
    db: &Client,
    invoice_ids: &[String],
) -> Result<HashMap<String, InvoiceStatus>, LifecycleError> {
    let mut rows: Vec<StatusRow> = Vec::new();
    for chunk in invoice_ids.chunks(1_000) {
        let list = format!("({})", vec!["?"; chunk.len()].join(", "));
        let mut q = db.query(&format!(
            "SELECT invoice_id, to_status FROM ( \
               SELECT invoice_id, transition_id, argMin(seq, at_ms) AS seq, \
                      argMin(to_status, at_ms) AS to_status, min(at_ms) AS t \
               FROM invoice_transitions WHERE invoice_id IN {list} \
               GROUP BY invoice_id, transition_id) \
             ORDER BY invoice_id, t, seq, transition_id"
        ));
        for id in chunk {
            q = q.bind(id);
        }
        rows.extend(q.fetch_all::<StatusRow>().await?);
    }
    fold_rows(rows)
}

/// Each invoice's status: the fold of its transitions in order, as [`status_of`].
fn fold_rows(rows: Vec<StatusRow>) -> Result<HashMap<String, InvoiceStatus>, LifecycleError> {
    let mut targets: HashMap<String, Vec<InvoiceStatus>> = HashMap::new();
    for r in rows {
        let to = r
            .to_status
            .parse::<InvoiceStatus>()
            .map_err(|_| LifecycleError::Corrupt {
                invoice_id: r.invoice_id.clone(),
                value: r.to_status.clone(),
            })?;
        targets.entry(r.invoice_id).or_default().push(to);
    }
    Ok(targets
        .into_iter()
        .map(|(id, to)| (id, fold(InvoiceStatus::Draft, to)))
        .collect())
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

/// Which of `invoice_ids` have a recorded finalization (whenever it was recorded), reading
/// only their rows (`invoice_transitions` is sorted by invoice id), 1,000 ids per query.
pub async fn finalized_among(
    db: &Client,
    invoice_ids: &[String],
) -> Result<std::collections::HashSet<String>, LifecycleError> {
    let mut out = std::collections::HashSet::new();
    for chunk in invoice_ids.chunks(1_000) {
        let list = vec!["?"; chunk.len()].join(", ");
        let mut q = db.query(&format!(
            "SELECT DISTINCT invoice_id FROM invoice_transitions \
             WHERE invoice_id IN ({list}) AND to_status = 'finalized'"
        ));
        for id in chunk {
            q = q.bind(id);
        }
        out.extend(q.fetch_all::<String>().await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use InvoiceStatus::{Draft, Finalized, Paid, Uncollectible, Void};

    fn history(targets: &[InvoiceStatus]) -> Vec<Transition> {
        targets
            .iter()
            .enumerate()
            .map(|(i, to)| Transition {
                transition_id: transition_id("inv_1", *to),
                invoice_id: "inv_1".into(),
                seq: u32::try_from(i).expect("small") + 1,
                from: Draft,
                to: *to,
                actor: "test".into(),
                reason: String::new(),
                at_ms: 1_000 + i64::try_from(i).expect("small"),
            })
            .collect()
    }

    #[test]
    fn the_document_finalizes_only_an_invoice_with_nothing_recorded() {
        let cases = [
            (Draft, false, Draft),
            (Draft, true, Finalized),
            (Finalized, true, Finalized),
            (Paid, true, Paid),
            // a draft voided before finalization stays void whatever the document says
            (Void, false, Void),
            (Void, true, Void),
            (Uncollectible, true, Uncollectible),
        ];
        for (recorded, document_finalized, want) in cases {
            assert_eq!(
                current(recorded, document_finalized),
                want,
                "{recorded}, document finalized: {document_finalized}"
            );
        }
    }

    #[test]
    fn the_fold_and_whether_it_passed_through_finalized() {
        let cases: [(&[InvoiceStatus], InvoiceStatus, bool); 6] = [
            (&[], Draft, false),
            (&[Finalized], Finalized, true),
            (&[Finalized, Paid], Paid, true),
            (&[Void], Void, false),
            (&[Finalized, Void], Void, true),
            // a record that lost the race (paid before finalized) is skipped
            (&[Paid, Finalized], Finalized, true),
        ];
        for (targets, status, finalized) in cases {
            let h = history(targets);
            assert_eq!(status_of(&h), status, "{targets:?}");
            assert_eq!(was_finalized(&h), finalized, "{targets:?}");
        }
    }

    #[test]
    fn many_invoices_fold_as_one() {
        let rows = [
            ("a", "finalized"),
            ("b", "void"),
            ("a", "paid"),
            ("c", "paid"),
            ("c", "finalized"),
        ]
        .map(|(id, to)| StatusRow {
            invoice_id: id.into(),
            to_status: to.into(),
        });
        let got = fold_rows(rows.into()).expect("folds");
        let want = HashMap::from([
            ("a".to_owned(), Paid),
            ("b".to_owned(), Void),
            ("c".to_owned(), Finalized),
        ]);
        assert_eq!(got, want);
        let bad = vec![StatusRow {
            invoice_id: "d".into(),
            to_status: "lost".into(),
        }];
        assert!(matches!(
            fold_rows(bad),
            Err(LifecycleError::Corrupt { .. })
        ));
    }
}
