//! Reading committed usage from the public view `v_usage` and folding it per customer,
//! billing period and meter. Only committed batches are visible through the view.

use std::collections::BTreeMap;

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_domain::{Aggregation, CustomerId, MeterSlug, Period};
use tally_platform::store::dec9;

use crate::catalog::Catalog;
use crate::charge::MeterUsage;

#[derive(Debug, clickhouse::Row, Deserialize)]
pub struct UsageRow {
    pub customer: String,
    pub meter: String,
    pub aggregation: String,
    #[serde(with = "dec9")]
    pub quantity: Decimal,
    pub window_start: u32,
    pub window_end: u32,
}

/// Committed usage windows starting in `[from_ms, to_ms)`.
pub async fn read(
    db: &Client,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<UsageRow>, clickhouse::error::Error> {
    db.query(
        "SELECT customer, meter, aggregation, quantity, toUInt32(window_start), toUInt32(window_end) FROM v_usage \
         WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?)",
    )
    .bind(from_ms.div_euclid(1000))
    .bind(to_ms.div_euclid(1000))
    .fetch_all()
    .await
}

/// What folding skipped, by cause.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Rows of customers with no subscription and no default plan.
    pub no_subscription: u64,
    /// Rows that could not be read (bad id or aggregation in storage).
    pub unreadable: u64,
}

/// Folds usage windows into one [`MeterUsage`] per (customer, period, meter), using each
/// customer's billing cycle. Sorted, so passes are deterministic.
pub fn fold(
    rows: &[UsageRow],
    catalog: &Catalog,
) -> (
    BTreeMap<(CustomerId, Period, MeterSlug), MeterUsage>,
    Skipped,
) {
    let mut out: BTreeMap<(CustomerId, Period, MeterSlug), MeterUsage> = BTreeMap::new();
    let mut skipped = Skipped::default();
    for row in rows {
        let (Ok(customer), Ok(meter), Ok(aggregation)) = (
            CustomerId::new(row.customer.clone()),
            MeterSlug::new(row.meter.clone()),
            row.aggregation.parse::<Aggregation>(),
        ) else {
            skipped.unreadable += 1;
            continue;
        };
        let Some(sub) = catalog.subscription(&customer) else {
            skipped.no_subscription += 1;
            continue;
        };
        let start_ms = i64::from(row.window_start) * 1000;
        let period = sub.cycle.period_containing(start_ms);
        let entry = out
            .entry((customer.clone(), period, meter.clone()))
            .or_insert_with(|| MeterUsage {
                customer,
                period,
                meter,
                aggregation,
                quantity: Decimal::ZERO,
                windows: 0,
                first_window_ms: start_ms,
                last_window_end_ms: start_ms,
            });
        entry.add_window(row.quantity, start_ms, i64::from(row.window_end) * 1000);
    }
    (out, skipped)
}
