//! Reading committed usage from the public views and folding it per customer, billing period,
//! meter and (for prices per group-by value) group. Only committed batches are visible
//! through the views. Folding is independent of the order rows arrive in. Window quantities
//! from `v_usage` merge into period quantities for every aggregation but UNIQUE_COUNT, whose
//! period quantity is the number of distinct values over the whole period: for those meters
//! the rows come from `v_usage_readings`, one per distinct (customer, meter, group, day, value)
//! (periods start at midnight UTC, so a day never straddles two), and the fold counts each
//! value once per period.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_domain::{Aggregation, CustomerId, MeterSlug, Period};
use tally_platform::store::dec9;

use crate::catalog::Catalog;
use crate::charge::MeterUsage;

/// One row of `v_usage`.
#[derive(Debug, Clone, clickhouse::Row, Deserialize)]
pub struct UsageRow {
    pub customer: String,
    pub meter: String,
    pub aggregation: String,
    pub group_key: String,
    pub group_names: Vec<String>,
    pub group_values: Vec<String>,
    #[serde(with = "dec9")]
    pub quantity: Decimal,
    pub window_start: u32,
    pub window_end: u32,
    /// For UNIQUE_COUNT rows, the distinct value; empty otherwise.
    pub unique_value: String,
}

/// Committed usage windows starting in `[from_ms, to_ms)`.
pub async fn read(
    db: &Client,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<UsageRow>, clickhouse::error::Error> {
    let (from, to) = (from_ms.div_euclid(1000), to_ms.div_euclid(1000));
    db.query(
        "SELECT customer, meter, aggregation, group_key, group_names, group_values, quantity, \
                toUInt32(window_start), toUInt32(window_end), '' \
         FROM v_usage \
         WHERE aggregation != 'UNIQUE_COUNT' AND window_start >= toDateTime(?) AND window_start < toDateTime(?) \
         UNION ALL \
         SELECT DISTINCT customer, meter, aggregation, group_key, group_names, group_values, toDecimal128(1, 9), \
                toUInt32(toStartOfDay(window_start)), toUInt32(toUInt32(toStartOfDay(window_start)) + 86400), unique_value \
         FROM v_usage_readings \
         WHERE aggregation = 'UNIQUE_COUNT' AND window_start >= toDateTime(?) AND window_start < toDateTime(?)",
    )
    .bind(from)
    .bind(to)
    .bind(from)
    .bind(to)
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

/// The fold's key: customer, period, segment start, meter, group key.
pub type UsageKey = (CustomerId, Period, i64, MeterSlug, String);

/// Folds usage windows into one [`MeterUsage`] per (customer, period, meter), using each
/// customer's billing cycle; when the plan version effective at the period's start prices
/// the meter per group-by value (a price book), per (customer, period, meter, group).
/// Sorted, so passes are deterministic.
pub fn fold(rows: &[UsageRow], catalog: &Catalog) -> (BTreeMap<UsageKey, MeterUsage>, Skipped) {
    let mut out: BTreeMap<UsageKey, MeterUsage> = BTreeMap::new();
    let mut skipped = Skipped::default();
    let mut unique_seen: HashSet<(UsageKey, &str)> = HashSet::new();
    for row in rows {
        let (Ok(customer), Ok(meter), Ok(aggregation)) = (
            CustomerId::new(row.customer.clone()),
            MeterSlug::new(row.meter.clone()),
            row.aggregation.parse::<Aggregation>(),
        ) else {
            skipped.unreadable += 1;
            continue;
        };
        let start_ms = i64::from(row.window_start) * 1000;
        let Some((plan_id, cycle, sub_from_ms, sub_to_ms)) =
            catalog.coverage_at(&customer, start_ms)
        else {
            skipped.no_subscription += 1;
            continue;
        };
        let period = cycle.period_containing(start_ms);
        // a subscription change inside the period splits it at the change
        let segment_from_ms = period.start_ms.max(sub_from_ms);
        let segment_to_ms = period.end_ms.min(sub_to_ms);
        let per_group = catalog
            .plan_at(plan_id, segment_from_ms)
            .and_then(|p| p.prices.get(&meter))
            .is_some_and(|p| p.model.per_group());
        let group_key = if per_group {
            row.group_key.clone()
        } else {
            "{}".to_owned()
        };
        // the key owns the ids; a new entry clones them, an existing one allocates nothing more
        let entry = match out.entry((customer, period, segment_from_ms, meter, group_key)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let (customer, _, _, meter, group_key) = v.key().clone();
                let (group_names, group_values) = if per_group {
                    (row.group_names.clone(), row.group_values.clone())
                } else {
                    (vec![], vec![])
                };
                v.insert(MeterUsage {
                    customer,
                    period,
                    meter,
                    aggregation,
                    group_key,
                    group_names,
                    group_values,
                    segment_from_ms,
                    segment_to_ms,
                    quantity: Decimal::ZERO,
                    windows: 0,
                    first_window_ms: start_ms,
                    last_window_end_ms: start_ms,
                })
            }
        };
        if entry.aggregation == Aggregation::UniqueCount {
            let key = (
                entry.customer.clone(),
                period,
                entry.segment_from_ms,
                entry.meter.clone(),
                entry.group_key.clone(),
            );
            if !unique_seen.insert((key, row.unique_value.as_str())) {
                continue; // the value was already counted in this period
            }
        }
        entry.add_window(row.quantity, start_ms, i64::from(row.window_end) * 1000);
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RaterConfig;
    use tally_domain::meter::{validate_meters, MeterSpec};

    fn catalog() -> Catalog {
        let specs: Vec<MeterSpec> = serde_json::from_str(
            r#"[{"slug":"users","event_type":"u","aggregation":"UNIQUE_COUNT","value_property":"$.user"}]"#,
        )
        .unwrap();
        let plans: Vec<crate::config::PlanSpec> = serde_json::from_str(
            r#"[{"id":"p","version":1,"currency":"USD","effective_from":"2020-01-01T00:00:00Z",
                 "prices":[{"model":"per_unit","meter":"users","unit_price":"1"}]}]"#,
        )
        .unwrap();
        let rater = RaterConfig {
            default_plan: Some("p".into()),
            ..Default::default()
        };
        Catalog::new(plans, vec![], &rater, &validate_meters(specs).unwrap()).unwrap()
    }

    fn row(day: u32, value: &str) -> UsageRow {
        UsageRow {
            customer: "acme".into(),
            meter: "users".into(),
            aggregation: "UNIQUE_COUNT".into(),
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            quantity: Decimal::ONE,
            window_start: 1_795_651_200 + day * 86_400, // 2026-11-26 + day
            window_end: 1_795_651_200 + (day + 1) * 86_400,
            unique_value: value.into(),
        }
    }

    #[test]
    fn unique_values_count_once_per_period_across_days() {
        // u-1 on two days of November, u-2 once, u-1 again in December (a new period)
        let rows = vec![row(0, "u-1"), row(1, "u-1"), row(1, "u-2"), row(5, "u-1")];
        let (usages, skipped) = fold(&rows, &catalog());
        assert_eq!(skipped, Skipped::default());
        let quantities: Vec<Decimal> = usages.values().map(|u| u.quantity).collect();
        assert_eq!(quantities, vec![Decimal::from(2), Decimal::from(1)]);
    }
}
