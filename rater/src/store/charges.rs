//! Writing charges to ClickHouse, append-only: a recomputation appends the same
//! `charge_id` with a higher `version`; `v_charges` shows the latest.

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_platform::store::{datetime_secs, dec9};

use crate::rating::charge::Charge;

#[derive(clickhouse::Row, Serialize)]
struct ChargeRow<'a> {
    charge_id: &'a str,
    customer: &'a str,
    period_start: u32,
    period_end: u32,
    meter: &'a str,
    group_key: &'a str,
    group_names: Vec<String>,
    group_values: Vec<String>,
    plan_id: &'a str,
    plan_version: u32,
    price_model: &'a str,
    currency: &'a str,
    #[serde(with = "dec9")]
    quantity: Decimal,
    unit_price: String,
    tiers: String,
    amount_minor: i64,
    amount_before_discounts_minor: i64,
    tax_region: &'a str,
    tax_code: &'a str,
    tax_rate: String,
    tax_minor: i64,
    amount_with_tax_minor: i64,
    price_currency: &'a str,
    fx_rate: String,
    windows: u32,
    usage_from: u32,
    usage_to: u32,
    computed_at: u32,
    version: u64,
}

/// Appends `charges` computed at `now_ms` (also their version).
pub async fn write(
    db: &Client,
    charges: &[Charge],
    now_ms: i64,
) -> Result<(), clickhouse::error::Error> {
    if charges.is_empty() {
        return Ok(());
    }
    let mut insert = db.insert::<ChargeRow<'_>>("charges").await?;
    for c in charges {
        insert
            .write(&ChargeRow {
                charge_id: &c.charge_id,
                customer: &c.customer,
                period_start: datetime_secs(c.period.start_ms),
                period_end: datetime_secs(c.period.end_ms),
                meter: &c.meter,
                group_key: &c.group_key,
                group_names: c.group_names.clone(),
                group_values: c.group_values.clone(),
                plan_id: &c.plan_id,
                plan_version: c.plan_version,
                price_model: c.price_model,
                currency: c.currency,
                quantity: c.quantity,
                unit_price: c.unit_price.map(|p| p.to_string()).unwrap_or_default(),
                tiers: serde_json::to_string(&c.tiers).unwrap_or_default(),
                amount_minor: c.amount_minor,
                amount_before_discounts_minor: c.amount_before_discounts_minor,
                tax_region: &c.tax_region,
                tax_code: &c.tax_code,
                tax_rate: c.tax_rate.map(|r| r.to_string()).unwrap_or_default(),
                tax_minor: c.tax_minor,
                amount_with_tax_minor: c.amount_with_tax_minor,
                price_currency: c.price_currency,
                fx_rate: c.fx_rate.map(|r| r.to_string()).unwrap_or_default(),
                windows: c.windows,
                usage_from: datetime_secs(c.usage_from_ms),
                usage_to: datetime_secs(c.usage_to_ms),
                computed_at: datetime_secs(now_ms),
                version: u64::try_from(now_ms).unwrap_or(0),
            })
            .await?;
    }
    insert.end().await
}
