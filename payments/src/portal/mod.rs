//! The customer portal: a signed, expiring link ([`link`]) opens one customer's page
//! ([`page`]) with usage of the current period by agent and meter and a chart ([`usage`],
//! [`chart`]), invoices with status and PDF download, and payments.
//!
//! Everything shown is loaded by [`load`] for the customer the link was signed for; an invoice
//! document is served only when its customer is that customer. The portal never shows
//! another customer's data and never reveals why a link was refused.

pub mod chart;
pub mod link;
pub mod page;
pub mod usage;

use std::collections::HashMap;

use clickhouse::Client;
use tally_domain::InvoiceStatus;

use crate::store::{self, InvoiceFacts, PaymentRow};
use crate::Error;

/// An invoice as the portal lists it.
#[derive(Debug, Clone)]
pub struct PortalInvoice {
    pub facts: InvoiceFacts,
    pub status: InvoiceStatus,
    pub paid_minor: i64,
}

/// Everything one customer's page shows.
#[derive(Debug, Clone)]
pub struct CustomerView {
    pub customer: String,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub usage: usage::Usage,
    pub invoices: Vec<PortalInvoice>,
    pub payments: Vec<PaymentRow>,
}

/// The current period at `now_ms`: that of the customer's invoice whose period contains now
/// (the open draft), else the calendar month (UTC) containing now.
fn current_period(invoices: &[InvoiceFacts], now_ms: i64) -> (i64, i64) {
    if let Some(i) = invoices
        .iter()
        .find(|i| i.period_start_ms <= now_ms && now_ms < i.period_end_ms)
    {
        return (i.period_start_ms, i.period_end_ms);
    }
    use chrono::{Datelike, TimeZone, Utc};
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default();
    let start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let end = Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    (start.timestamp_millis(), end.timestamp_millis())
}

/// Loads `customer`'s view at `now_ms`.
pub async fn load(db: &Client, customer: &str, now_ms: i64) -> Result<CustomerView, Error> {
    let facts = store::invoices_of(db, customer).await?;
    let (from, to) = current_period(&facts, now_ms);
    let usage = usage::load(db, customer, from, to).await?;
    let statuses = store::statuses(db).await?;
    let mut payments = Vec::new();
    let mut paid: HashMap<String, i64> = HashMap::new();
    for f in &facts {
        for p in store::payments_of(db, &f.invoice_id).await? {
            if p.kind == "payment" {
                *paid.entry(p.invoice_id.clone()).or_default() += p.amount_minor;
            }
            payments.push(p);
        }
    }
    payments.sort_by(|a, b| (b.at_ms, &b.payment_id).cmp(&(a.at_ms, &a.payment_id)));
    let invoices = facts
        .into_iter()
        .map(|f| PortalInvoice {
            status: statuses.get(&f.invoice_id).copied().unwrap_or(
                if f.invoicer_status == "finalized" {
                    InvoiceStatus::Finalized
                } else {
                    InvoiceStatus::Draft
                },
            ),
            paid_minor: paid.get(&f.invoice_id).copied().unwrap_or(0),
            facts: f,
        })
        .collect();
    Ok(CustomerView {
        customer: customer.to_owned(),
        period_start_ms: from,
        period_end_ms: to,
        usage,
        invoices,
        payments,
    })
}

/// The invoice document `invoice_id` if it belongs to `customer`.
pub async fn invoice_for(
    db: &Client,
    customer: &str,
    invoice_id: &str,
) -> Result<Option<tally_invoicer::Invoice>, Error> {
    let Some(f) = store::invoice(db, invoice_id).await? else {
        return Ok(None);
    };
    if f.customer != customer {
        return Ok(None);
    }
    serde_json::from_str(&f.document)
        .map(Some)
        .map_err(|e| Error::Corrupt(format!("invoice {invoice_id} document: {e}")))
}
