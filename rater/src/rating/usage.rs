//! Reading committed usage for a rating pass and folding it per customer, billing period (or
//! the part of it a subscription covers), meter and (for prices per group-by value) group.
//!
//! The read is [`tally_platform::usage`]'s: sealed days from the daily rollups, the rest
//! from the window partials, bounded by the range. Days that a period or a subscription
//! change cuts inside (a customer's midnight outside UTC, a plan change at 10:37) are read at
//! window resolution ([`split_days`]), so every period boundary falls between two windows in
//! any time zone. UNIQUE_COUNT meters come with their distinct values per row, and the fold
//! counts each value once per period.
//!
//! One customer's bad data never stops the others: a quantity too large to represent (over
//! [`quantity_max`]) or an unreadable row puts that customer in [`Folded::failed`], with the
//! reason, and the fold goes on.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use clickhouse::Client;
use rust_decimal::Decimal;
use tally_domain::{Aggregation, CustomerId, MeterSlug, Period};
pub use tally_platform::usage::UsageRow;
use tally_platform::usage::{self, Request, Resolution, Scope, Totals};

use crate::catalog::Catalog;
use crate::rating::charge::MeterUsage;

const DAY_MS: i64 = 86_400_000;

/// The largest period quantity rated (10^19 units): beyond it the customer's usage for the
/// pass is refused with `quantity_overflow` (a window or period that large is bad data; the
/// decimal arithmetic of pricing has about 10^28 of room and must keep it for prices).
pub fn quantity_max() -> Decimal {
    Decimal::from(10_000_000_000_000_000_000u64)
}

/// Why a customer was left out of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailReason {
    /// A window, day or period quantity above the limit.
    QuantityOverflow,
    /// A row whose customer id, meter or aggregation cannot be read.
    Unreadable,
    /// Pricing overflowed (quantity times price, tiers, tax).
    ChargeOverflow,
    /// The read of the customer's older usage (widened for a correction of an old event)
    /// failed, e.g. refused by the server: that customer's periods are not priced this pass.
    ReadFailed,
}

impl FailReason {
    /// The `reason` label of `tally_rater_customer_failures_total`.
    pub fn code(self) -> &'static str {
        match self {
            FailReason::QuantityOverflow => "quantity_overflow",
            FailReason::Unreadable => "unreadable",
            FailReason::ChargeOverflow => "charge_overflow",
            FailReason::ReadFailed => "read_failed",
        }
    }
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

/// The result of a fold.
#[derive(Debug, Default)]
pub struct Folded {
    pub usages: BTreeMap<UsageKey, MeterUsage>,
    pub skipped: Skipped,
    /// Customers left out of this pass, with why (their usages are not in `usages`).
    pub failed: BTreeMap<String, FailReason>,
}

/// The (customer, UTC day) pairs that a period or subscription boundary cuts inside, within
/// `[from_ms, to_ms)`: read at window resolution.
pub fn split_days(catalog: &Catalog, from_ms: i64, to_ms: i64) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (customer, bounds) in catalog.boundaries(from_ms, to_ms) {
        let mut days: Vec<u32> = bounds
            .into_iter()
            .filter(|b| b.rem_euclid(DAY_MS) != 0 && *b > from_ms && *b < to_ms)
            .filter_map(|b| u32::try_from((b - b.rem_euclid(DAY_MS)) / 1000).ok())
            .collect();
        days.sort_unstable();
        days.dedup();
        out.extend(days.into_iter().map(|d| (customer.to_string(), d)));
    }
    out
}

/// The customers whose billing changes within `[from_ms, to_ms)` at an instant that is not a
/// UTC calendar month's start (another anchor day, a time zone, a subscription change): their
/// sealed days are read one by one; every other customer's are folded per calendar month on
/// the server (a period of theirs is always whole months of such days).
pub fn not_calendar_monthly(catalog: &Catalog, from_ms: i64, to_ms: i64) -> Vec<String> {
    use chrono::{Datelike, Timelike};
    let month_start = |ms: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).is_some_and(|t| {
            t.day() == 1 && t.num_seconds_from_midnight() == 0 && t.timestamp_subsec_millis() == 0
        })
    };
    let mut out: Vec<String> = catalog
        .boundaries(from_ms, to_ms)
        .into_iter()
        .filter(|(_, bounds)| bounds.iter().any(|b| !month_start(*b)))
        .map(|(c, _)| c.to_string())
        .collect();
    out.sort();
    out
}

/// Reads committed usage starting in `[from_ms, to_ms)` (sealed days as day rows, whole
/// unsealed days per day, cut days per window) and folds it as it arrives; returns the fold
/// and the number of rows read.
pub async fn read_and_fold(
    db: &Client,
    catalog: &Catalog,
    from_ms: i64,
    to_ms: i64,
) -> Result<(Folded, usize), clickhouse::error::Error> {
    read_and_fold_widened(db, catalog, from_ms, to_ms, &[]).await
}

/// How many customers one widened read names in its `customer IN (...)` list (the list, and
/// those customers' split days, are in the query text, which the server caps in size).
pub const WIDENED_CHUNK: usize = 100;

/// [`read_and_fold`] for every customer from `from_ms`, plus, for each `(customer, from)` of
/// `widened` with `from` before `from_ms`, that customer's older usage from `from` (both
/// rounded down to a UTC day, like the main read): one fold, as if each widened customer had
/// been read from its own start. The older reads name their customers ([`Scope::Customers`],
/// [`WIDENED_CHUNK`] at a time, customers with close starts together, each chunk from its
/// earliest start): a correction of one customer's old event never re-reads the others'
/// history. A customer read from before its own start gets more usage, never less: the
/// periods a pass prices for it are still whole.
pub async fn read_and_fold_widened(
    db: &Client,
    catalog: &Catalog,
    from_ms: i64,
    to_ms: i64,
    widened: &[(String, i64)],
) -> Result<(Folded, usize), clickhouse::error::Error> {
    // whole days, so the sealed days inside are read as days
    let day_floor = |ms: i64| ms - ms.rem_euclid(DAY_MS);
    let from_ms = day_floor(from_ms);
    let to_ms = to_ms + (DAY_MS - to_ms.rem_euclid(DAY_MS)) % DAY_MS;
    let mut folder = Folder::new(catalog);
    let mut rows = read_into(db, catalog, &mut folder, (from_ms, to_ms), None).await?;
    let mut older: Vec<(i64, &str)> = widened
        .iter()
        .map(|(c, from)| (day_floor(*from), c.as_str()))
        .filter(|(from, _)| *from < from_ms)
        .collect();
    older.sort_unstable();
    for chunk in older.chunks(WIDENED_CHUNK) {
        let chunk_from = chunk.iter().map(|(f, _)| *f).min().unwrap_or(from_ms);
        let customers: Vec<String> = chunk.iter().map(|(_, c)| (*c).to_owned()).collect();
        let read = (chunk_from, from_ms);
        match read_into(db, catalog, &mut folder, read, Some(&customers)).await {
            Ok(n) => rows += n,
            // one chunk's failure (a query the server refuses as too large: its split days
            // grow with how far back it reads) leaves its customers out of the pass, never
            // the others; they are retried next pass
            Err(e) => {
                tracing::error!(error = %e, customers = customers.len(), from_ms = chunk_from,
                    "widened usage read failed; its customers are not rated this pass");
                folder.fail(&customers, FailReason::ReadFailed);
            }
        }
    }
    Ok((folder.finish(), rows))
}

/// Reads committed usage of `[from_ms, to_ms)` (whole UTC days) of every customer, or of
/// `only` these, into `folder`; returns the number of rows.
async fn read_into(
    db: &Client,
    catalog: &Catalog,
    folder: &mut Folder<'_>,
    (from_ms, to_ms): (i64, i64),
    only: Option<&[String]>,
) -> Result<usize, clickhouse::error::Error> {
    let secs =
        |ms: i64| u32::try_from(ms.div_euclid(1000)).unwrap_or(if ms < 0 { 0 } else { u32::MAX });
    let listed = |c: &String| only.is_none_or(|o| o.contains(c));
    let mut split = split_days(catalog, from_ms, to_ms);
    split.retain(|(c, _)| listed(c));
    let mut by_day = not_calendar_monthly(catalog, from_ms, to_ms);
    by_day.retain(|c| listed(c));
    let plan = usage::plan(db, secs(from_ms)).await?;
    let req = Request {
        from: secs(from_ms),
        to: secs(to_ms),
        scope: only.map_or(Scope::All, Scope::Customers),
        meter: None,
        by_agent: false,
        resolution: Resolution::Days,
        split: &split,
        months_except: Some(&by_day),
        through: None,
    };
    usage::read_each(db, &plan, &req, |row| folder.add(&row)).await
}

/// A fold in progress: rows are added one by one (from a cursor), never all held.
pub struct Folder<'c> {
    catalog: &'c Catalog,
    out: Folded,
    accs: BTreeMap<UsageKey, Totals>,
}

impl<'c> Folder<'c> {
    pub fn new(catalog: &'c Catalog) -> Folder<'c> {
        Folder {
            catalog,
            out: Folded::default(),
            accs: BTreeMap::new(),
        }
    }

    /// Leaves `customers` out of the pass for `reason` (their rows read so far are dropped).
    pub fn fail(&mut self, customers: &[String], reason: FailReason) {
        for c in customers {
            self.out.failed.entry(c.clone()).or_insert(reason);
        }
    }

    /// Adds one row (a failing customer is remembered and its later rows skipped).
    pub fn add(&mut self, row: &UsageRow) {
        if self.out.failed.contains_key(&row.customer) {
            return;
        }
        if let Err(reason) = fold_row(row, self.catalog, &mut self.out, &mut self.accs) {
            self.out.failed.insert(row.customer.clone(), reason);
        }
    }

    /// The usages, with their quantities, of every customer that did not fail.
    pub fn finish(mut self) -> Folded {
        for (key, acc) in self.accs {
            if self.out.failed.contains_key(key.0.as_ref()) {
                self.out.usages.remove(&key);
                continue;
            }
            if let Some(u) = self.out.usages.get_mut(&key) {
                u.quantity = acc.quantity(u.aggregation.as_str()).unwrap_or_default();
            }
        }
        self.out
    }
}

/// Folds usage rows into one [`MeterUsage`] per (customer, period, meter), using each
/// customer's billing cycle; when the plan version effective at the period's start prices
/// the meter per group-by value (a price book), per (customer, period, meter, group).
/// Sorted, so passes are deterministic.
pub fn fold(rows: &[UsageRow], catalog: &Catalog) -> Folded {
    let mut folder = Folder::new(catalog);
    for row in rows {
        folder.add(row);
    }
    folder.finish()
}

fn fold_row(
    row: &UsageRow,
    catalog: &Catalog,
    out: &mut Folded,
    accs: &mut BTreeMap<UsageKey, Totals>,
) -> Result<(), FailReason> {
    let (Ok(customer), Ok(meter), Ok(aggregation)) = (
        CustomerId::new(row.customer.clone()),
        MeterSlug::new(row.meter.clone()),
        row.aggregation.parse::<Aggregation>(),
    ) else {
        out.skipped.unreadable += 1;
        return Err(FailReason::Unreadable);
    };
    let start_ms = i64::from(row.start) * 1000;
    let Some(cover) = catalog.coverage_for(&customer, &meter, start_ms) else {
        out.skipped.no_subscription += 1;
        return Ok(());
    };
    let period = cover.cycle.period_containing(start_ms);
    // a subscription change inside the period splits it at the change
    let segment_from_ms = period.start_ms.max(cover.from_ms);
    let segment_to_ms = period.end_ms.min(cover.to_ms);
    let per_group = catalog
        .plan_version(cover.plan, cover.plan_version, segment_from_ms)
        .and_then(|p| p.prices.get(&meter))
        .is_some_and(|p| p.model.per_group());
    let group_key = if per_group {
        row.group_key.clone()
    } else {
        "{}".to_owned()
    };
    let key = (customer, period, segment_from_ms, meter, group_key);
    let totals = accs.entry(key.clone()).or_default();
    totals.add(row).ok_or(FailReason::QuantityOverflow)?;
    let within = totals
        .quantity(row.aggregation.as_str())
        .is_some_and(|q| q.abs() <= quantity_max());
    if !within {
        return Err(FailReason::QuantityOverflow);
    }
    let end_ms = i64::from(row.end) * 1000;
    let usage = match out.usages.entry(key) {
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
                last_window_end_ms: end_ms,
            })
        }
    };
    usage.first_window_ms = usage.first_window_ms.min(start_ms);
    usage.last_window_end_ms = usage.last_window_end_ms.max(end_ms);
    usage.windows += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RaterConfig;
    use tally_domain::meter::{validate_meters, MeterSpec};
    use tally_platform::usage::Units;

    fn catalog() -> Catalog {
        let specs: Vec<MeterSpec> = serde_json::from_str(
            r#"[{"slug":"users","event_type":"u","aggregation":"UNIQUE_COUNT","value_property":"$.user"},
                {"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n"}]"#,
        )
        .unwrap();
        let plans: Vec<crate::config::PlanSpec> = serde_json::from_str(
            r#"[{"id":"p","version":1,"currency":"USD","effective_from":"2020-01-01T00:00:00Z",
                 "prices":[{"model":"per_unit","meter":"users","unit_price":"1"},
                           {"model":"per_unit","meter":"tokens","unit_price":"1"}]}]"#,
        )
        .unwrap();
        let rater = RaterConfig {
            default_plan: Some("p".into()),
            ..Default::default()
        };
        Catalog::new(plans, vec![], &rater, &validate_meters(specs).unwrap()).unwrap()
    }

    const DAY: u32 = 86_400;
    const NOV26: u32 = 1_795_651_200; // 2026-11-26

    fn row(customer: &str, meter: &str, day: u32, units: i128, values: &[&str]) -> UsageRow {
        let aggregation = if meter == "users" {
            "UNIQUE_COUNT"
        } else {
            "SUM"
        };
        UsageRow {
            customer: customer.into(),
            agent: String::new(),
            meter: meter.into(),
            aggregation: aggregation.into(),
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            start: NOV26 + day * DAY,
            end: NOV26 + (day + 1) * DAY,
            events: 1,
            sum: Units(units),
            min: Units(units),
            max: Units(units),
            latest: Units(units),
            latest_time_ms: 0,
            latest_event_id: String::new(),
            unique_values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn unique_values_count_once_per_period_across_days() {
        // u-1 on two days of November, u-2 once, u-1 again in December (a new period)
        let rows = vec![
            row("acme", "users", 0, 0, &["u-1"]),
            row("acme", "users", 1, 0, &["u-1", "u-2"]),
            row("acme", "users", 5, 0, &["u-1"]),
        ];
        let folded = fold(&rows, &catalog());
        assert_eq!(folded.skipped, Skipped::default());
        let quantities: Vec<Decimal> = folded.usages.values().map(|u| u.quantity).collect();
        assert_eq!(quantities, vec![Decimal::from(2), Decimal::from(1)]);
    }

    /// A widened read that failed leaves its customers out of the pass (their rows read
    /// before the failure dropped), never the others.
    #[test]
    fn a_failed_read_leaves_only_its_customers_out() {
        let cat = catalog();
        let mut folder = Folder::new(&cat);
        folder.add(&row("acme", "tokens", 0, 5, &[]));
        folder.add(&row("globex", "tokens", 0, 7, &[]));
        folder.fail(&["globex".to_owned()], FailReason::ReadFailed);
        folder.add(&row("globex", "tokens", 1, 9, &[]));
        let folded = folder.finish();
        let customers: Vec<&str> = folded.usages.keys().map(|k| k.0.as_str()).collect();
        assert_eq!(customers, vec!["acme"]);
        assert_eq!(
            folded.failed,
            BTreeMap::from([("globex".to_owned(), FailReason::ReadFailed)])
        );
        assert_eq!(FailReason::ReadFailed.code(), "read_failed");
    }

    /// Issue 14, requirement 6: one customer's window above the limit (8 * 10^19, what
    /// 80,000 events at the per-event maximum make) used to fail every pass; now only that
    /// customer is left out, with its reason.
    #[test]
    fn one_customers_overflowing_usage_leaves_the_others_rated() {
        let huge = 80_000_000_000_000_000_000i128 * 1_000_000_000; // 8e19 in units of 1e-9
        let rows = vec![
            row("big", "tokens", 0, huge, &[]),
            row("big", "tokens", 1, 5_000_000_000, &[]),
            row("acme", "tokens", 0, 7_000_000_000, &[]),
            // two rows that each fit but whose sum does not
            row(
                "twice",
                "tokens",
                0,
                6_000_000_000_000_000_000i128 * 1_000_000_000,
                &[],
            ),
            row(
                "twice",
                "tokens",
                1,
                6_000_000_000_000_000_000i128 * 1_000_000_000,
                &[],
            ),
        ];
        let folded = fold(&rows, &catalog());
        assert_eq!(
            folded.failed.get("big"),
            Some(&FailReason::QuantityOverflow)
        );
        assert_eq!(
            folded.failed.get("twice"),
            Some(&FailReason::QuantityOverflow)
        );
        let rated: Vec<(String, Decimal)> = folded
            .usages
            .values()
            .map(|u| (u.customer.to_string(), u.quantity))
            .collect();
        assert_eq!(rated, vec![("acme".to_owned(), Decimal::from(7))]);
    }
}
