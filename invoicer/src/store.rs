//! Reading charges and existing invoices from ClickHouse, and appending invoices and their
//! lines. Invoices are versioned rows: a draft is rewritten by appending a higher version
//! with the same id; `v_invoices` and `v_invoice_lines` show the latest.

use std::collections::HashSet;

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::Period;
use tally_platform::store::{datetime_secs, dec9};

use crate::invoice::{ChargeLine, Invoice};

#[derive(clickhouse::Row, Deserialize)]
struct ChargeRow {
    charge_id: String,
    customer: String,
    period_start: u32,
    period_end: u32,
    meter: String,
    group_key: String,
    group_names: Vec<String>,
    group_values: Vec<String>,
    plan_id: String,
    plan_version: u32,
    price_model: String,
    currency: String,
    #[serde(with = "dec9")]
    quantity: Decimal,
    unit_price: String,
    tiers: String,
    amount_minor: i64,
    amount_before_discounts_minor: i64,
    tax_rate: String,
    tax_minor: i64,
}

/// The latest charges of every period ending after `since_ms`.
pub async fn charges_since(
    db: &Client,
    since_ms: i64,
) -> Result<Vec<ChargeLine>, clickhouse::error::Error> {
    let rows: Vec<ChargeRow> = db
        .query(
            "SELECT charge_id, customer, toUInt32(period_start), toUInt32(period_end), meter, group_key, group_names, \
             group_values, plan_id, plan_version, price_model, currency, quantity, unit_price, tiers, amount_minor, \
             amount_before_discounts_minor, tax_rate, tax_minor \
             FROM v_charges WHERE period_end > toDateTime(?)",
        )
        .bind(since_ms.div_euclid(1000))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| ChargeLine {
            charge_id: r.charge_id,
            customer: r.customer,
            period: Period {
                start_ms: i64::from(r.period_start) * 1000,
                end_ms: i64::from(r.period_end) * 1000,
            },
            meter: r.meter,
            group_key: r.group_key,
            group_names: r.group_names,
            group_values: r.group_values,
            plan_id: r.plan_id,
            plan_version: r.plan_version,
            price_model: r.price_model,
            currency: r.currency,
            quantity: r.quantity,
            unit_price: r.unit_price,
            tiers_json: r.tiers,
            amount_minor: r.amount_minor,
            amount_before_discounts_minor: r.amount_before_discounts_minor,
            tax_rate: r.tax_rate,
            tax_minor: r.tax_minor,
        })
        .collect())
}

/// Ids of invoices already finalized (never to be rewritten).
pub async fn finalized_ids(db: &Client) -> Result<HashSet<String>, clickhouse::error::Error> {
    let ids: Vec<String> = db
        .query("SELECT invoice_id FROM v_invoices WHERE status = 'finalized'")
        .fetch_all()
        .await?;
    Ok(ids.into_iter().collect())
}

#[derive(clickhouse::Row, Serialize)]
struct InvoiceRow<'a> {
    invoice_id: &'a str,
    customer: &'a str,
    period_start: u32,
    period_end: u32,
    status: &'a str,
    currency: &'a str,
    subtotal_minor: i64,
    total_minor: i64,
    line_count: u32,
    plan_id: &'a str,
    plan_version: u32,
    issued_at: u32,
    document: String,
    version: u64,
}

#[derive(clickhouse::Row, Serialize)]
struct LineRow<'a> {
    invoice_id: &'a str,
    line_no: u32,
    charge_id: &'a str,
    meter: &'a str,
    group_key: &'a str,
    description: &'a str,
    #[serde(with = "dec9")]
    quantity: Decimal,
    price_model: &'a str,
    unit_price: &'a str,
    tiers: String,
    amount_minor: i64,
    currency: &'a str,
    plan_id: &'a str,
    plan_version: u32,
    version: u64,
}

/// Appends the invoices (lines first, then headers) as version `now_ms`.
pub async fn write(
    db: &Client,
    invoices: &[Invoice],
    now_ms: i64,
) -> Result<(), clickhouse::error::Error> {
    if invoices.is_empty() {
        return Ok(());
    }
    let version = u64::try_from(now_ms).unwrap_or(0);
    let mut lines = db.insert::<LineRow<'_>>("invoice_lines").await?;
    for inv in invoices {
        for l in &inv.lines {
            lines
                .write(&LineRow {
                    invoice_id: &inv.invoice_id,
                    line_no: l.line_no,
                    charge_id: &l.charge_id,
                    meter: &l.meter,
                    group_key: &l.group_key,
                    description: &l.description,
                    quantity: l.quantity,
                    price_model: &l.price_model,
                    unit_price: &l.unit_price,
                    tiers: l.tiers.to_string(),
                    amount_minor: l.amount_minor,
                    currency: &inv.currency,
                    plan_id: &l.plan_id,
                    plan_version: l.plan_version,
                    version,
                })
                .await?;
        }
    }
    lines.end().await?;
    let mut headers = db.insert::<InvoiceRow<'_>>("invoices").await?;
    for inv in invoices {
        headers
            .write(&InvoiceRow {
                invoice_id: &inv.invoice_id,
                customer: &inv.customer,
                period_start: datetime_secs(inv.period.start_ms),
                period_end: datetime_secs(inv.period.end_ms),
                status: inv.status.as_str(),
                currency: &inv.currency,
                subtotal_minor: inv.subtotal_minor,
                total_minor: inv.total_minor,
                line_count: inv.lines.len() as u32,
                plan_id: &inv.plan_id,
                plan_version: inv.plan_version,
                issued_at: datetime_secs(now_ms),
                document: serde_json::to_string(inv).unwrap_or_default(),
                version,
            })
            .await?;
    }
    headers.end().await
}
