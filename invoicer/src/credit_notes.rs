//! Credit notes against finalized invoices: what is credited back (before tax, and the tax),
//! why, and by whom. Append-only rows in `credit_notes` with deterministic ids, so a retried
//! issue collapses in `v_credit_notes` (the earliest record wins). The invoice itself is never
//! changed. Manual notes come from the API; the invoicer issues one when late usage or a
//! correction (a voided or amended event: docs/INGEST.md, "Corrections") lowers a finalized
//! invoice's charge ([`crate::late`]); such a note names the corrections in `lines`.

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::{Currency, CustomerId};
use tally_platform::store::datetime_secs;
use xxhash_rust::xxh3::xxh3_128;

/// One credit note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct CreditNote {
    pub credit_note_id: String,
    pub invoice_id: String,
    /// The charge a late-usage note corrects; empty for manual notes.
    pub charge_id: String,
    pub customer: CustomerId,
    pub currency: Currency,
    /// Credited amount before tax, positive, in minor units.
    pub amount_minor: i64,
    pub tax_minor: i64,
    pub reason: String,
    /// JSON: what the note credits (for late usage: the charge's billed and latest amounts).
    pub lines: String,
    pub actor: String,
    pub issued_at_ms: i64,
}

#[derive(clickhouse::Row, Serialize)]
struct Row<'a> {
    credit_note_id: &'a str,
    invoice_id: &'a str,
    charge_id: &'a str,
    customer: &'a str,
    currency: &'a str,
    amount_minor: i64,
    tax_minor: i64,
    reason: &'a str,
    lines: &'a str,
    actor: &'a str,
    issued_at_ms: i64,
    issued_at: u32,
}

/// A deterministic credit note id from what makes the note unique.
pub fn id(parts: &[&str]) -> String {
    format!("cn_{:032x}", xxh3_128(parts.join("\0").as_bytes()))
}

/// Appends credit notes (idempotent per id).
pub async fn issue(db: &Client, notes: &[CreditNote]) -> Result<(), clickhouse::error::Error> {
    if notes.is_empty() {
        return Ok(());
    }
    let mut insert = db.insert::<Row<'_>>("credit_notes").await?;
    for n in notes {
        insert
            .write(&Row {
                credit_note_id: &n.credit_note_id,
                invoice_id: &n.invoice_id,
                charge_id: &n.charge_id,
                customer: n.customer.as_str(),
                currency: n.currency.code(),
                amount_minor: n.amount_minor,
                tax_minor: n.tax_minor,
                reason: &n.reason,
                lines: &n.lines,
                actor: &n.actor,
                issued_at_ms: n.issued_at_ms,
                issued_at: datetime_secs(n.issued_at_ms),
            })
            .await?;
    }
    insert.end().await
}

/// The credit notes of an invoice, oldest first.
pub async fn of_invoice(
    db: &Client,
    invoice_id: &str,
) -> Result<Vec<CreditNote>, clickhouse::error::Error> {
    db.query(
        "SELECT credit_note_id, invoice_id, charge_id, customer, currency, amount_minor, tax_minor, reason, \
         lines, actor, issued_at_ms FROM v_credit_notes WHERE invoice_id = ? ORDER BY issued_at_ms, credit_note_id",
    )
    .bind(invoice_id)
    .fetch_all()
    .await
}
