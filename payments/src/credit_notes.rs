//! Reading the invoicer's credit notes (`v_credit_notes`) that the ledger has not posted yet.
//! The view is the invoicer's; when it does not exist (an older schema) there are none. The
//! view's `amount_minor` is before tax; the ledger credits the receivable with amount plus tax.
//! It never writes: credit notes are the invoicer's; only their journals are posted here.

use std::collections::HashSet;

use clickhouse::Client;
use serde::Deserialize;
use tally_domain::{Currency, CustomerId};
use tally_invoice::invoice::customer_currency;

use crate::ledger::Operation;
use crate::store;

/// A credit note to post.
pub struct Unposted {
    pub op: Operation,
    pub currency: Currency,
    pub customer: CustomerId,
}

#[derive(clickhouse::Row, Deserialize)]
struct Row {
    credit_note_id: String,
    invoice_id: String,
    customer: String,
    currency: String,
    amount_minor: i64,
    tax_minor: i64,
}

/// Credit notes whose journal (`cn:<id>`) is not in `posted`; a note whose customer id or
/// currency does not validate is logged and left out (never booked in an unknown currency).
pub async fn unposted(
    db: &Client,
    posted: &HashSet<String>,
) -> Result<Vec<Unposted>, clickhouse::error::Error> {
    if !store::exists(db, "v_credit_notes").await? {
        return Ok(Vec::new());
    }
    let rows: Vec<Row> = db
        .query(
            "SELECT credit_note_id, invoice_id, customer, currency, toInt64(amount_minor), \
             toInt64(tax_minor) FROM v_credit_notes ORDER BY credit_note_id",
        )
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let (customer, currency) = customer_currency("credit_notes", r.customer, &r.currency)?;
            Some(Unposted {
                op: Operation::CreditNote {
                    credit_note_id: r.credit_note_id,
                    invoice_id: r.invoice_id,
                    amount_minor: r.amount_minor.saturating_add(r.tax_minor),
                    tax_minor: r.tax_minor,
                },
                currency,
                customer,
            })
        })
        .filter(|u| !posted.contains(&u.op.journal_id()))
        .collect())
}
