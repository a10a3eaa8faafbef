//! The customer portal: a signed, expiring link ([`link`]) opens one customer's page
//! ([`page`]) under its catalog name ([`account`]): live spend, budgets and entitlements asked
//! of the spend decider ([`live`]), cost per day by meter and agent ([`cost`]) and usage per
//! day ([`usage`]) of the current period drawn as SVG charts ([`chart`]), amounts in the
//! invoice currency ([`format`]), prepaid credits, the prepaid wallet (balances, grants with
//! what is left and when they expire), invoices with status and PDF download, and payments.
//!
//! Everything shown is loaded by [`load`] for the customer the link was signed for; an invoice
//! document is served only when its customer is that customer. The portal never shows
//! another customer's data and never reveals why a link was refused.

pub mod account;
pub mod chart;
pub mod cost;
pub mod format;
#[cfg(test)]
mod golden;
pub mod link;
pub mod live;
pub mod page;
pub mod usage;
pub mod wallet;

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
    /// The catalog's display name (`None`: no catalog entry; the id is shown).
    pub name: Option<String>,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    /// When the page was built.
    pub now_ms: i64,
    pub usage: usage::Usage,
    pub costs: cost::Costs,
    /// The decider's balance; `None` when none answered (or live spend is off).
    pub live: Option<live::Balance>,
    pub credits: account::Credits,
    /// The prepaid wallet (grants, what is left of each, balances per currency).
    pub wallet: crate::wallet::http::WalletView,
    pub invoices: Vec<PortalInvoice>,
    pub payments: Vec<PaymentRow>,
}

/// The current period at `now_ms`: that of the customer's invoice whose period contains now
/// (the open draft), else that of its charges (the rater's period containing now), else the
/// calendar month (UTC) containing now.
fn current_period(invoices: &[InvoiceFacts], charges: &[cost::Charge], now_ms: i64) -> (i64, i64) {
    if let Some(i) = invoices
        .iter()
        .find(|i| i.period_start_ms <= now_ms && now_ms < i.period_end_ms)
    {
        return (i.period_start_ms, i.period_end_ms);
    }
    if let Some(c) = charges.first() {
        return (
            i64::from(c.period_start) * 1000,
            i64::from(c.period_end) * 1000,
        );
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

/// Loads `customer`'s view at `now_ms`; the live balance is asked of `live` meanwhile.
pub async fn load(
    db: &Client,
    live: Option<&live::LiveSpend>,
    customer: &str,
    now_ms: i64,
) -> Result<CustomerView, Error> {
    let asked = async {
        match live {
            Some(l) => l.balance(customer).await,
            None => None,
        }
    };
    let (live, stored) = tokio::join!(asked, load_stored(db, customer, now_ms));
    let mut view = stored?;
    view.live = live;
    Ok(view)
}

/// Everything but the live balance.
async fn load_stored(db: &Client, customer: &str, now_ms: i64) -> Result<CustomerView, Error> {
    let facts = store::invoices_of(db, customer).await?;
    let now_secs = u32::try_from(now_ms.div_euclid(1000)).unwrap_or(0);
    let charges = cost::charges(db, customer, now_secs).await?;
    let (from, to) = current_period(&facts, &charges, now_ms);
    let usage = usage::load(db, customer, from, to).await?;
    let costs = cost::divide(&charges, &usage);
    let name = account::customer_name(db, customer).await?;
    let credits = account::credits(db, customer).await?;
    let ids: Vec<String> = facts.iter().map(|f| f.invoice_id.clone()).collect();
    let statuses = tally_invoice::lifecycle::statuses_of(db, &ids).await?;
    // the link was signed for a checked customer id ([`link::token`])
    let id = tally_domain::CustomerId::new(customer)
        .map_err(|e| Error::Corrupt(format!("portal customer {customer:?}: {e}")))?;
    let wallet = crate::wallet::http::view(db, &id).await?;
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
            status: tally_invoice::lifecycle::current(
                statuses
                    .get(&f.invoice_id)
                    .copied()
                    .unwrap_or(InvoiceStatus::Draft),
                f.document_finalized(),
            ),
            paid_minor: paid.get(&f.invoice_id).copied().unwrap_or(0),
            facts: f,
        })
        .collect();
    Ok(CustomerView {
        customer: customer.to_owned(),
        name,
        period_start_ms: from,
        period_end_ms: to,
        now_ms,
        usage,
        costs,
        live: None,
        credits,
        wallet,
        invoices,
        payments,
    })
}

/// The invoice document `invoice_id` if it belongs to `customer`.
pub async fn invoice_for(
    db: &Client,
    customer: &str,
    invoice_id: &str,
) -> Result<Option<tally_invoice::Invoice>, Error> {
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
