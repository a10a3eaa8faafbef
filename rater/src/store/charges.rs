//! Writing charges to ClickHouse, append-only: a recomputation appends the same
//! `charge_id` with a higher `version`; `v_charges` shows the latest. The row is
//! [`tally_platform::store::charges::ChargeRow`], the one the invoicer reads.

use clickhouse::Client;
use tally_platform::store::charges::ChargeRow;
use tally_platform::store::datetime_secs;

use crate::rating::charge::Charge;

/// The stored row of `c`, computed at `now_ms` (also its version).
pub fn row(c: &Charge, now_ms: i64) -> ChargeRow {
    ChargeRow {
        charge_id: c.charge_id.clone(),
        customer: c.customer.clone(),
        period_start: datetime_secs(c.period.start_ms),
        period_end: datetime_secs(c.period.end_ms),
        meter: c.meter.clone(),
        group_key: c.group_key.clone(),
        group_names: c.group_names.clone(),
        group_values: c.group_values.clone(),
        plan_id: c.plan_id.clone(),
        plan_version: c.plan_version,
        price_model: c.price_model.to_owned(),
        currency: c.currency.to_owned(),
        quantity: c.quantity,
        unit_price: c.unit_price.map(|p| p.to_string()).unwrap_or_default(),
        tiers: serde_json::to_string(&c.tiers).unwrap_or_default(),
        amount_minor: c.amount_minor,
        amount_before_discounts_minor: c.amount_before_discounts_minor,
        tax_region: c.tax_region.clone(),
        tax_code: c.tax_code.clone(),
        tax_rate: c.tax_rate.map(|r| r.to_string()).unwrap_or_default(),
        tax_minor: c.tax_minor,
        amount_with_tax_minor: c.amount_with_tax_minor,
        price_currency: c.price_currency.to_owned(),
        fx_rate: c.fx_rate.map(|r| r.to_string()).unwrap_or_default(),
        windows: c.windows,
        usage_from: datetime_secs(c.usage_from_ms),
        usage_to: datetime_secs(c.usage_to_ms),
        computed_at: datetime_secs(now_ms),
        version: u64::try_from(now_ms).unwrap_or(0),
    }
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
    let mut insert = db.insert::<ChargeRow>("charges").await?;
    for c in charges {
        insert.write(&row(c, now_ms)).await?;
    }
    insert.end().await
}
