//! Late usage: charges of a period whose invoice is already finalized that changed after it
//! was finalized (the rater recomputes a period when late events land in it).
//!
//! For every charge of a finalized period (within `adjustment_lookback_secs`), what was billed
//! is the sum of its lines on non-draft invoices (the finalized invoice and adjustments on
//! later ones) minus the late-usage credit notes issued for it. A difference that raises the
//! amount becomes an adjustment line on the customer's next invoice (same currency, a later
//! period), naming the invoice it corrects and the charge; one that lowers it becomes a
//! credit note against the finalized invoice. The finalized invoice is never changed. The
//! events behind an adjustment are the charge's usage readings committed after the corrected
//! invoice was finalized (see the lineage API). A credit note caused by corrections (voided
//! events, docs/INGEST.md "Corrections") names them: its `lines` carry their ids under
//! `corrections` and its reason starts with them; an adjustment's description ends with the
//! imports (backfilled events, docs/INGEST.md "Backfill") and corrections behind it. A period
//! corrected or backfilled within `adjustment_lookback_secs` is compared however long ago it
//! ended, for its customer only (`tally_platform::usage::reach`). Charges are compared a
//! batch of whole customers at a time ([`pending`]).

use std::collections::{HashMap, HashSet};

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_domain::{Currency, CustomerId, Period};
use tally_platform::store::dec9;

use crate::config::InvoicerConfig;
use crate::credit_notes::{self, CreditNote};
use crate::invoice::{self, ChargeLine, InvoiceLine, LineKind};
use crate::store::{placeholders, IDS_PER_QUERY as IDS};
use crate::{currency_split, store};

/// An adjustment waiting for the customer's next invoice.
#[derive(Debug, Clone)]
pub struct Pending {
    pub customer: CustomerId,
    pub currency: Currency,
    /// The corrected (finalized) period.
    pub period: Period,
    pub line: InvoiceLine,
}

#[derive(clickhouse::Row, Deserialize)]
struct Billed {
    charge_id: String,
    #[serde(with = "dec9")]
    quantity: Decimal,
    amount_minor: i64,
    before_minor: i64,
    tax_minor: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct Credited {
    charge_id: String,
    amount_minor: i64,
    tax_minor: i64,
}

/// What was billed for a charge so far.
#[derive(Debug, Default, Clone, Copy)]
struct SoFar {
    quantity: Decimal,
    amount_minor: i64,
    before_minor: i64,
    tax_minor: i64,
    /// Credit notes already issued for the charge (amount plus tax), part of a new note's id.
    credited_minor: i64,
}

/// Finds late usage at `now_ms`: issues the credit notes (lowered charges) and returns the
/// adjustments (raised charges) for the customers' next invoices.
///
/// The charges of the lookback are read with the pass's cursor ([`store::ChargeBatches`]),
/// a batch of whole customers at a time, and each batch is compared and its notes written
/// before the next is read: memory is bounded by a batch (and the adjustments found), not by
/// the lookback. A stored charge that does not validate is left out, logged and counted
/// (`tally_invoicer_invoice_failures_total`; by the pass's own cursor when its period is in
/// the pass's lookback too, so once per pass); the others are compared.
pub async fn pending(
    db: &Client,
    cfg: &InvoicerConfig,
    now_ms: i64,
) -> Result<Vec<Pending>, clickhouse::error::Error> {
    let since_ms =
        now_ms - i64::try_from(cfg.adjustment_lookback_secs.saturating_mul(1000)).unwrap_or(0);
    // a period corrected (or backfilled) within the lookback is compared however old, for its
    // customer only
    let reach = tally_platform::usage::reach(db, since_ms).await?;
    // a bad charge of a period the pass reads too is counted by the pass
    let pass_since_ms = now_ms - i64::try_from(cfg.lookback_secs.saturating_mul(1000)).unwrap_or(0);
    let mut batches = store::ChargeBatches::open(
        db,
        &reach,
        crate::run::BATCH_CUSTOMERS,
        crate::run::BATCH_CHARGES,
    )?
    .counted_until(pass_since_ms);
    let mut out = Vec::new();
    while let Some(batch) = batches.next_batch().await? {
        let notes = compare(db, batch, now_ms, &mut out).await?;
        credit_notes::issue(db, &notes).await?;
    }
    Ok(out)
}

/// Compares one batch's charges (whole customers) with what was billed for them: pushes the
/// adjustments onto `out` and returns the credit notes to issue.
async fn compare(
    db: &Client,
    batch: Vec<ChargeLine>,
    now_ms: i64,
    out: &mut Vec<Pending>,
) -> Result<Vec<CreditNote>, clickhouse::error::Error> {
    // a charge belongs to its currency's invoice of the period (`currency_split`)
    let ids = currency_split::resolve(db, &batch).await?;
    let with_ids: Vec<(String, ChargeLine)> = batch.into_iter().map(|c| (ids.of(&c), c)).collect();
    let mut invoice_ids: Vec<String> = with_ids.iter().map(|(id, _)| id.clone()).collect();
    invoice_ids.sort_unstable();
    invoice_ids.dedup();
    let finalized = not_drafts(db, &invoice_ids).await?;
    if finalized.is_empty() {
        return Ok(Vec::new());
    }
    let mut customers: Vec<&str> = with_ids.iter().map(|(_, c)| c.customer.as_str()).collect();
    customers.dedup();
    let mut finalized_ids: Vec<String> = finalized.iter().cloned().collect();
    finalized_ids.sort_unstable();
    let so_far = billed(db, &finalized_ids, &customers).await?;
    let mut notes = Vec::new();
    for (corrected, c) in with_ids.iter().filter(|(id, _)| finalized.contains(id)) {
        let was = so_far.get(&c.charge_id).copied().unwrap_or_default();
        let (d_amount, d_tax) = (
            c.amount_minor - was.amount_minor,
            c.tax_minor - was.tax_minor,
        );
        if d_amount == 0 && d_tax == 0 {
            continue;
        }
        if d_amount + d_tax < 0 || (d_amount <= 0 && d_tax <= 0) {
            let by = corrections_of(db, c).await?;
            notes.push(credit_note(c, corrected, was, now_ms, &by));
            continue;
        }
        let currency = c.currency;
        let mut line = invoice::line(c, currency);
        line.kind = LineKind::Adjustment;
        line.quantity = c.quantity - was.quantity;
        line.amount_before_discounts_minor = c.amount_before_discounts_minor - was.before_minor;
        line.amount_minor = d_amount;
        line.discount_minor = line.amount_before_discounts_minor - d_amount;
        line.amount = currency.from_minor(d_amount);
        line.tax_minor = d_tax;
        let by = corrections_of(db, c).await?;
        line.description = format!(
            "late usage of {} to {}: {}{}",
            &invoice::rfc3339(c.period.start_ms)[..10],
            &invoice::rfc3339(c.period.end_ms)[..10],
            line.description,
            named(&by)
        );
        line.adjusts_invoice_id = Some(corrected.clone());
        out.push(Pending {
            customer: c.customer.clone(),
            currency: c.currency,
            period: c.period,
            line,
        });
    }
    Ok(notes)
}

/// Which of `invoice_ids` are not drafts (`v_invoices.status != 'draft'`: a finalized row
/// stored, or a lifecycle transition recorded), reading only their rows (`invoices` and
/// `invoice_transitions` are sorted by invoice id).
async fn not_drafts(
    db: &Client,
    invoice_ids: &[String],
) -> Result<HashSet<String>, clickhouse::error::Error> {
    let mut out = HashSet::new();
    for chunk in invoice_ids.chunks(IDS) {
        let list = placeholders(chunk.len());
        let sql = format!(
            "SELECT invoice_id FROM invoices WHERE invoice_id IN {list} AND status != 'draft' \
             UNION ALL SELECT invoice_id FROM invoice_transitions \
             WHERE invoice_id IN {list} AND to_status != 'draft'"
        );
        let mut query = db.query(&sql);
        for id in chunk.iter().chain(chunk) {
            query = query.bind(id);
        }
        out.extend(query.fetch_all::<String>().await?);
    }
    Ok(out)
}

/// The counted corrections (voided events, migration 0060) of the charge's customer and
/// meter whose deltas fall in its period, by id: the lineage of a note they caused. Bounded by
/// the period on the deltas' sorting key; the list names every counted correction of the
/// period, including those an earlier note already credited. An import (backfilled events,
/// `bf:<import>:<hash>`) is named by one of its ids, so the list stays as short as the
/// imports are few, however many events they hold.
async fn corrections_of(
    db: &Client,
    c: &ChargeLine,
) -> Result<Vec<String>, clickhouse::error::Error> {
    let (from, to) = (
        c.period.start_ms.div_euclid(1000),
        c.period.end_ms.div_euclid(1000),
    );
    // the counted corrections' deltas: one content per id (tally_platform::usage has the rule)
    db.query(&format!(
        "SELECT DISTINCT correction_id FROM usage_correction_deltas \
         WHERE toStartOfHour(window_start) >= toStartOfHour(toDateTime(?)) \
           AND toStartOfHour(window_start) <= toStartOfHour(toDateTime(?)) \
           AND window_start >= toDateTime(?) AND window_start < toDateTime(?) \
           AND customer = ? AND meter = ? AND {} \
         ORDER BY correction_id \
         LIMIT 1 BY if(substring(correction_id, 1, 3) = 'bf:', \
                       substring(correction_id, 1, length(correction_id) - 17), correction_id)",
        tally_platform::usage::counted_deltas_sql(" AND customer = ?"),
    ))
    .bind(from)
    .bind(to)
    .bind(from)
    .bind(to)
    .bind(&c.customer)
    .bind(&c.meter)
    .bind(&c.customer)
    .fetch_all()
    .await
}

/// What an adjustment's description names: the imports (backfills) and the other
/// corrections behind the charge's period, e.g. ` (import imp-1; corrections v-1)`; empty
/// when none.
fn named(corrections: &[String]) -> String {
    let mut imports: Vec<&str> = corrections
        .iter()
        .filter_map(|c| tally_domain::identity::backfill_import(c))
        .collect();
    imports.dedup();
    let others: Vec<&str> = corrections
        .iter()
        .map(String::as_str)
        .filter(|c| tally_domain::identity::backfill_import(c).is_none())
        .collect();
    let mut parts = Vec::new();
    match imports.len() {
        0 => {}
        1 => parts.push(format!("import {}", imports[0])),
        _ => parts.push(format!("imports {}", imports.join(", "))),
    }
    match others.len() {
        0 => {}
        1 => parts.push(format!("correction {}", others[0])),
        _ => parts.push(format!("corrections {}", others.join(", "))),
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

/// A late-usage note's id: the charge and the amounts it lowers to, and, once notes were
/// issued for the charge, their sum. A charge lowered, raised again (an adjustment) and lowered
/// to the same amount once more (a chain of amends) gets a second note, never the first one's
/// id again (which `v_credit_notes` would keep as the first, dropping the second).
fn note_id(c: &ChargeLine, was: SoFar) -> String {
    let (amount, tax) = (c.amount_minor.to_string(), c.tax_minor.to_string());
    if was.credited_minor == 0 {
        credit_notes::id(&["late", &c.charge_id, &amount, &tax])
    } else {
        let credited = was.credited_minor.to_string();
        credit_notes::id(&["late", &c.charge_id, &amount, &tax, &credited])
    }
}

fn credit_note(
    c: &ChargeLine,
    invoice_id: &str,
    was: SoFar,
    now_ms: i64,
    corrections: &[String],
) -> CreditNote {
    let (amount, tax) = (
        was.amount_minor - c.amount_minor,
        was.tax_minor - c.tax_minor,
    );
    let reason = if corrections.is_empty() && c.price_model == "flat" {
        // a fee does not follow usage: the subscription changed after it was invoiced (a
        // cancellation, plan change or pause shortening a fee billed in advance)
        format!(
            "subscription changed: unused part of fee {} of {} credited",
            c.charge_id, c.meter
        )
    } else if corrections.is_empty() {
        format!("late usage lowered charge {} of {}", c.charge_id, c.meter)
    } else {
        format!(
            "corrections {} lowered charge {} of {}",
            corrections.join(", "),
            c.charge_id,
            c.meter
        )
    };
    CreditNote {
        credit_note_id: note_id(c, was),
        invoice_id: invoice_id.to_owned(),
        charge_id: c.charge_id.clone(),
        customer: c.customer.clone(),
        currency: c.currency,
        amount_minor: amount,
        tax_minor: tax,
        reason,
        lines: serde_json::json!({
            "charge_id": c.charge_id,
            "meter": c.meter,
            "group_key": c.group_key,
            "billed_minor": was.amount_minor,
            "latest_minor": c.amount_minor,
            "billed_tax_minor": was.tax_minor,
            "latest_tax_minor": c.tax_minor,
            "corrections": corrections,
        })
        .to_string(),
        actor: crate::run::ACTOR.to_owned(),
        issued_at_ms: now_ms,
    }
}

/// Billed so far per charge of one batch: lines of the latest version of its non-draft
/// invoices (`finalized`: the finalized invoices of its periods and the later ones that
/// carry their adjustments, all of the batch's customers), minus the late-usage credit notes
/// of its `customers` (`credit_notes` is sorted by customer). The rows of `v_invoice_lines`
/// and `v_credit_notes`, read from the tables since ClickHouse 18.16 pushes no predicate into
/// a view.
async fn billed(
    db: &Client,
    finalized: &[String],
    customers: &[&str],
) -> Result<HashMap<String, SoFar>, clickhouse::error::Error> {
    let mut out: HashMap<String, SoFar> = HashMap::new();
    for chunk in finalized.chunks(IDS) {
        let list = placeholders(chunk.len());
        let sql = format!(
            "SELECT charge_id, sum(quantity) AS q, toInt64(sum(amount_minor)) AS a, \
                    toInt64(sum(amount_before_discounts_minor)) AS b, toInt64(sum(tax_minor)) AS t \
             FROM invoice_lines FINAL \
             WHERE invoice_id IN {list} AND (invoice_id, version) IN \
                   (SELECT invoice_id, max(version) FROM invoices WHERE invoice_id IN {list} \
                    GROUP BY invoice_id) \
             GROUP BY charge_id"
        );
        let mut query = db.query(&sql);
        for id in chunk.iter().chain(chunk) {
            query = query.bind(id);
        }
        for b in query.fetch_all::<Billed>().await? {
            let e = out.entry(b.charge_id).or_default();
            e.quantity += b.quantity;
            e.amount_minor = e.amount_minor.saturating_add(b.amount_minor);
            e.before_minor = e.before_minor.saturating_add(b.before_minor);
            e.tax_minor = e.tax_minor.saturating_add(b.tax_minor);
        }
    }
    for chunk in customers.chunks(IDS) {
        let sql = format!(
            "SELECT note_charge, toInt64(sum(note_amount)) AS a, toInt64(sum(note_tax)) AS t \
             FROM (SELECT credit_note_id, argMin(charge_id, issued_at_ms) AS note_charge, \
                          argMin(amount_minor, issued_at_ms) AS note_amount, \
                          argMin(tax_minor, issued_at_ms) AS note_tax \
                   FROM credit_notes WHERE customer IN {} GROUP BY credit_note_id) \
             WHERE note_charge != '' GROUP BY note_charge",
            placeholders(chunk.len())
        );
        let mut query = db.query(&sql);
        for c in chunk {
            query = query.bind(*c);
        }
        for c in query.fetch_all::<Credited>().await? {
            let e = out.entry(c.charge_id).or_default();
            e.amount_minor -= c.amount_minor;
            e.before_minor -= c.amount_minor;
            e.tax_minor -= c.tax_minor;
            e.credited_minor = e
                .credited_minor
                .saturating_add(c.amount_minor)
                .saturating_add(c.tax_minor);
        }
    }
    Ok(out)
}

/// Takes the adjustments for the customer's invoice of `period` (same currency, corrected
/// periods before it).
pub fn take_for(
    pending: &mut Vec<Pending>,
    customer: &CustomerId,
    currency: Currency,
    period: Period,
) -> Vec<InvoiceLine> {
    let mut taken = Vec::new();
    pending.retain(|p| {
        let mine =
            p.customer == *customer && p.currency == currency && p.period.end_ms <= period.start_ms;
        if mine {
            taken.push(p.line.clone());
        }
        !mine
    });
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(minor: i64) -> ChargeLine {
        ChargeLine {
            charge_id: "chg_tokens".into(),
            customer: tally_domain::CustomerId::new("acme").unwrap(),
            period: Period {
                start_ms: 0,
                end_ms: 1_000,
            },
            meter: "tokens".into(),
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            plan_id: "p".into(),
            plan_version: 1,
            price_model: "per_unit".into(),
            currency: "USD".parse().unwrap(),
            quantity: Decimal::from(10),
            unit_price: "0.5".into(),
            tiers_json: "[]".into(),
            amount_minor: minor,
            amount_before_discounts_minor: minor,
            tax_rate: String::new(),
            tax_minor: 0,
        }
    }

    /// 675 lowered to 390 (a note of 285), raised to 675 again (an adjustment), lowered to 390
    /// once more: the second note has an id of its own, so both are kept.
    #[test]
    fn a_charge_lowered_twice_to_one_amount_gets_two_notes() {
        let lowered = charge(390);
        let first = SoFar {
            amount_minor: 675,
            ..SoFar::default()
        };
        let second = SoFar {
            amount_minor: 675,
            credited_minor: 285,
            ..SoFar::default()
        };
        let a = credit_note(&lowered, "inv_1", first, 0, &[]);
        let b = credit_note(&lowered, "inv_1", second, 0, &[]);
        assert_eq!((a.amount_minor, b.amount_minor), (285, 285));
        assert_ne!(a.credit_note_id, b.credit_note_id);
        // a first note keeps the id it always had
        assert_eq!(
            a.credit_note_id,
            credit_notes::id(&["late", "chg_tokens", "390", "0"])
        );
        // the same facts give the same id (a second invoicer, a retried pass)
        assert_eq!(
            b.credit_note_id,
            credit_note(&lowered, "inv_1", second, 5, &[]).credit_note_id
        );
    }
}
