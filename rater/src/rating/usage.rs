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

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use clickhouse::Client;
use rust_decimal::Decimal;
use tally_domain::{Aggregation, CustomerId, MeterSlug, Period};
pub use tally_platform::usage::UsageRow;
use tally_platform::usage::{self, Request, Resolution, Scope, Totals};

use crate::catalog::Catalog;
use crate::rating::charge::MeterUsage;

const DAY_MS: i64 = 86_400_000;

/// The group key of a usage priced for all its groups together.
const ALL_GROUPS: &str = "{}";

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
///
/// Once a row's customer, meter and group have been seen, the fold itself allocates nothing
/// per row (issue 21): each of those strings is interned once (one hash of it, then a small
/// integer), the subscription covering a row is looked up once per (customer, meter, window
/// start) in a row (the rows of one window's groups share it), and the row's accumulator is
/// found by a hash of integers. The running totals (`Totals::add`) do allocate for some rows:
/// each value of a UNIQUE_COUNT row is copied into its usage's set (and dropped if already
/// there), and a LATEST row that becomes the latest copies its event id. The ids and the group's values are copied once per usage,
/// and the sorted [`Folded::usages`] is built once, by [`Folder::finish`], after the lookup
/// tables are freed.
///
/// Memory grows with what was read, never with a product of counts: one cache entry per
/// (customer, meter) pair seen, one accumulator per usage.
pub struct Folder<'c> {
    catalog: &'c Catalog,
    out: Folded,
    quantity_max: Decimal,
    /// Customer strings as read, interned; per index, what the fold knows of that customer.
    customer_index: HashMap<Box<str>, usize>,
    customers: Vec<CustomerFold>,
    /// Meter strings as read, interned; per index, the slug (none: unreadable).
    meter_index: HashMap<Box<str>, usize>,
    meters: Vec<Option<MeterSlug>>,
    /// Group keys, interned (index 0 is `{}`, all groups together).
    group_index: HashMap<Box<str>, usize>,
    /// Per (customer, meter) index pair seen: the window start last looked up and what it
    /// resolved to.
    last: HashMap<(usize, usize), (i64, Option<Resolved>), IntBuildHasher>,
    /// Where each usage's accumulator is in `accs`.
    slots: HashMap<SlotKey, usize, IntBuildHasher>,
    accs: Vec<Acc>,
    /// Rows resolved from the cache (tests check that their rows exercise it).
    #[cfg(test)]
    cache_hits: u64,
}

type IntBuildHasher = BuildHasherDefault<IntHasher>;

/// One interned customer.
struct CustomerFold {
    /// The id (none: unreadable, and the customer failed at its first row).
    id: Option<CustomerId>,
    /// Left out of the pass ([`Folded::failed`] holds the reason).
    failed: bool,
}

/// Where a row of a customer and meter starting at some instant is folded.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    period: Period,
    segment_from_ms: i64,
    segment_to_ms: i64,
    /// The plan version prices the meter per group-by value.
    per_group: bool,
}

/// [`UsageKey`] with the strings interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SlotKey {
    customer: usize,
    meter: usize,
    group: usize,
    period: Period,
    segment_from_ms: i64,
}

/// One usage being folded: its customer's index, the usage and its running totals.
struct Acc {
    customer: usize,
    usage: MeterUsage,
    totals: Totals,
}

/// The index of `s` in `index`, interned on first sight (`on_new` is called with it then).
/// Indexes are `usize`, the positions of the vectors they index: they never saturate or wrap
/// (a vector cannot hold more than `usize::MAX` entries).
fn intern(index: &mut HashMap<Box<str>, usize>, s: &str, on_new: impl FnOnce()) -> usize {
    if let Some(&i) = index.get(s) {
        return i;
    }
    let i = index.len();
    index.insert(s.into(), i);
    on_new();
    i
}

/// A hasher for [`SlotKey`]s (small integers only, never strings from outside: those go
/// through the std hasher), the multiply-rotate of `rustc-hash`.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl IntHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Where a row of `meter` of `customer` starting at `start_ms` is folded (none: no
/// subscription covers it).
fn resolve(
    catalog: &Catalog,
    customer: &CustomerId,
    meter: &MeterSlug,
    start_ms: i64,
) -> Option<Resolved> {
    let cover = catalog.coverage_for(customer, meter, start_ms)?;
    let period = cover.cycle.period_containing(start_ms);
    // a subscription change inside the period splits it at the change
    let segment_from_ms = period.start_ms.max(cover.from_ms);
    let segment_to_ms = period.end_ms.min(cover.to_ms);
    let per_group = catalog
        .plan_version(cover.plan, cover.plan_version, segment_from_ms)
        .and_then(|p| p.prices.get(meter))
        .is_some_and(|p| p.model.per_group());
    Some(Resolved {
        period,
        segment_from_ms,
        segment_to_ms,
        per_group,
    })
}

impl<'c> Folder<'c> {
    pub fn new(catalog: &'c Catalog) -> Folder<'c> {
        Folder {
            catalog,
            out: Folded::default(),
            quantity_max: quantity_max(),
            customer_index: HashMap::new(),
            customers: Vec::new(),
            meter_index: HashMap::new(),
            meters: Vec::new(),
            group_index: HashMap::from([(Box::from(ALL_GROUPS), 0)]),
            last: HashMap::default(),
            slots: HashMap::default(),
            accs: Vec::new(),
            #[cfg(test)]
            cache_hits: 0,
        }
    }

    /// Leaves `customers` out of the pass for `reason` (their rows read so far are dropped).
    pub fn fail(&mut self, customers: &[String], reason: FailReason) {
        for c in customers {
            self.out.failed.entry(c.clone()).or_insert(reason);
            if let Some(&i) = self.customer_index.get(c.as_str()) {
                self.customers[i].failed = true;
            }
        }
    }

    /// Adds one row (a failing customer is remembered and its later rows skipped).
    pub fn add(&mut self, row: &UsageRow) {
        let (customers, failed) = (&mut self.customers, &self.out.failed);
        let c = intern(&mut self.customer_index, &row.customer, || {
            customers.push(CustomerFold {
                id: CustomerId::new(row.customer.clone()).ok(),
                failed: failed.contains_key(&row.customer),
            });
        });
        if self.customers[c].failed {
            return;
        }
        if let Err(reason) = self.fold_row(c, row) {
            self.customers[c].failed = true;
            self.out.failed.insert(row.customer.clone(), reason);
        }
    }

    /// The usages, with their quantities, of every customer that did not fail.
    pub fn finish(self) -> Folded {
        let Folder {
            mut out,
            customers,
            accs,
            customer_index,
            meter_index,
            group_index,
            last,
            slots,
            ..
        } = self;
        // the lookup tables are done with: freed before the sorted map is built
        drop((customer_index, meter_index, group_index, last, slots));
        let mut usages: Vec<(UsageKey, MeterUsage)> = accs
            .into_iter()
            .filter(|acc| !customers[acc.customer].failed)
            .map(|Acc { usage, totals, .. }| {
                let quantity = totals.quantity(usage.aggregation.as_str());
                let usage = MeterUsage {
                    quantity: quantity.unwrap_or_default(),
                    ..usage
                };
                let key = (
                    usage.customer.clone(),
                    usage.period,
                    usage.segment_from_ms,
                    usage.meter.clone(),
                    usage.group_key.clone(),
                );
                (key, usage)
            })
            .collect();
        usages.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // one accumulator per key: a second would silently replace the first's usage
        debug_assert!(
            usages.windows(2).all(|w| w[0].0 != w[1].0),
            "two accumulators of one usage key"
        );
        // built from sorted keys in one go
        out.usages = usages.into_iter().collect();
        out
    }

    /// Folds one row of customer `c` (interned, not failed) into its usage.
    fn fold_row(&mut self, c: usize, row: &UsageRow) -> Result<(), FailReason> {
        let meters = &mut self.meters;
        let m = intern(&mut self.meter_index, &row.meter, || {
            meters.push(MeterSlug::new(row.meter.clone()).ok());
        });
        let (Some(_), Some(_), Ok(aggregation)) = (
            self.customers[c].id.as_ref(),
            self.meters[m].as_ref(),
            row.aggregation.parse::<Aggregation>(),
        ) else {
            self.out.skipped.unreadable += 1;
            return Err(FailReason::Unreadable);
        };
        let start_ms = i64::from(row.start) * 1000;
        let Some(r) = self.resolved(c, m, start_ms) else {
            self.out.skipped.no_subscription += 1;
            return Ok(());
        };
        let group = if r.per_group {
            intern(&mut self.group_index, &row.group_key, || {})
        } else {
            0
        };
        let key = SlotKey {
            customer: c,
            meter: m,
            group,
            period: r.period,
            segment_from_ms: r.segment_from_ms,
        };
        let slot = match self.slots.get(&key) {
            Some(&slot) => slot,
            None => self.new_slot(key, row, aggregation, &r)?,
        };
        let Acc { usage, totals, .. } = &mut self.accs[slot];
        totals.add(row).ok_or(FailReason::QuantityOverflow)?;
        let within = totals
            .quantity(row.aggregation.as_str())
            .is_some_and(|q| q.abs() <= self.quantity_max);
        if !within {
            return Err(FailReason::QuantityOverflow);
        }
        let end_ms = i64::from(row.end) * 1000;
        usage.first_window_ms = usage.first_window_ms.min(start_ms);
        usage.last_window_end_ms = usage.last_window_end_ms.max(end_ms);
        usage.windows += 1;
        Ok(())
    }

    /// Where rows of customer `c` and meter `m` (both interned and readable) starting at
    /// `start_ms` are folded: the cached look-up of the pair when it was for the same start,
    /// else a new one, cached in its place (none: no subscription covers it).
    fn resolved(&mut self, c: usize, m: usize, start_ms: i64) -> Option<Resolved> {
        let entry = match self.last.entry((c, m)) {
            Entry::Occupied(hit) if hit.get().0 == start_ms => {
                #[cfg(test)]
                {
                    self.cache_hits += 1;
                }
                return hit.get().1;
            }
            entry => entry,
        };
        let (id, meter) = (self.customers[c].id.as_ref()?, self.meters[m].as_ref()?);
        let resolved = resolve(self.catalog, id, meter, start_ms);
        match entry {
            Entry::Occupied(mut old) => *old.get_mut() = (start_ms, resolved),
            Entry::Vacant(new) => {
                new.insert((start_ms, resolved));
            }
        }
        resolved
    }

    /// A new, empty usage for `key` (seen first in `row`), with its accumulator's index (the
    /// ids are copied here, once per usage; [`Folder::fold_row`] has checked them readable).
    fn new_slot(
        &mut self,
        key: SlotKey,
        row: &UsageRow,
        aggregation: Aggregation,
        r: &Resolved,
    ) -> Result<usize, FailReason> {
        let id = self.customers[key.customer].id.clone();
        let meter = self.meters[key.meter].clone();
        let (Some(id), Some(meter)) = (id, meter) else {
            return Err(FailReason::Unreadable);
        };
        let (group_key, group_names, group_values) = if r.per_group {
            let (n, v) = (row.group_names.clone(), row.group_values.clone());
            (row.group_key.clone(), n, v)
        } else {
            (ALL_GROUPS.to_owned(), vec![], vec![])
        };
        let start_ms = i64::from(row.start) * 1000;
        self.accs.push(Acc {
            customer: key.customer,
            usage: MeterUsage {
                customer: id,
                period: r.period,
                meter,
                aggregation,
                group_key,
                group_names,
                group_values,
                segment_from_ms: r.segment_from_ms,
                segment_to_ms: r.segment_to_ms,
                quantity: Decimal::ZERO,
                windows: 0,
                first_window_ms: start_ms,
                last_window_end_ms: i64::from(row.end) * 1000,
            },
            totals: Totals::default(),
        });
        let slot = self.accs.len() - 1;
        self.slots.insert(key, slot);
        Ok(slot)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RaterConfig;
    use proptest::prelude::*;
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

    /// The fold as it was before issue 21 (string keys in two B-trees, ids copied per row):
    /// the reference the interned fold must equal, row for row.
    fn reference_fold(ops: &[Op], catalog: &Catalog) -> Folded {
        let mut out = Folded::default();
        let mut accs: BTreeMap<UsageKey, Totals> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Row(row) => {
                    if out.failed.contains_key(&row.customer) {
                        continue;
                    }
                    if let Err(reason) = reference_row(row, catalog, &mut out, &mut accs) {
                        out.failed.insert(row.customer.clone(), reason);
                    }
                }
                Op::Fail(c) => {
                    out.failed
                        .entry(c.clone())
                        .or_insert(FailReason::ReadFailed);
                }
            }
        }
        for (key, acc) in accs {
            if out.failed.contains_key(key.0.as_ref()) {
                out.usages.remove(&key);
                continue;
            }
            if let Some(u) = out.usages.get_mut(&key) {
                u.quantity = acc.quantity(u.aggregation.as_str()).unwrap_or_default();
            }
        }
        out
    }

    fn reference_row(
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
        let usage = out.usages.entry(key).or_insert_with_key(|k| {
            let (customer, _, _, meter, group_key) = k.clone();
            let (group_names, group_values) = if per_group {
                (row.group_names.clone(), row.group_values.clone())
            } else {
                (vec![], vec![])
            };
            MeterUsage {
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
            }
        });
        usage.first_window_ms = usage.first_window_ms.min(start_ms);
        usage.last_window_end_ms = usage.last_window_end_ms.max(end_ms);
        usage.windows += 1;
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Row(Box<UsageRow>),
        Fail(String),
    }

    /// The plans and subscriptions of [`split_catalog`].
    const SPLIT_PLANS: &str = r#"
            [[plans]]
            id = "pro"
            version = 1
            currency = "USD"
            effective_from = "2026-01-01T00:00:00Z"
            prices = [
              { model = "per_unit", meter = "calls", unit_price = "0.01" },
              { model = "per_unit", meter = "seats", unit_price = "5" },
              { model = "dimensional", meter = "tokens", dimensions = ["model"], rates = [{ values = ["a"], unit_price = "1" }] },
            ]
            [[plans]]
            id = "pro"
            version = 2
            currency = "USD"
            effective_from = "2026-11-20T00:00:00Z"
            prices = [
              { model = "per_unit", meter = "calls", unit_price = "0.01" },
              { model = "per_unit", meter = "tokens", unit_price = "1" },
              { model = "per_unit", meter = "seats", unit_price = "5" },
            ]
            [[plans]]
            id = "metered"
            version = 1
            currency = "USD"
            effective_from = "2026-01-01T00:00:00Z"
            prices = [
              { model = "per_unit", meter = "users", unit_price = "1" },
              { model = "per_unit", meter = "tokens", unit_price = "1" },
              { model = "per_unit", meter = "peak", unit_price = "2" },
            ]
            [[subscriptions]]
            customer = "acme"
            plan = "pro"
            effective_from = "2026-11-01T00:00:00Z"
            [[subscriptions]]
            customer = "acme"
            plan = "metered"
            effective_from = "2026-11-12T10:37:00Z"
            [[subscriptions]]
            customer = "berlin"
            plan = "pro"
            effective_from = "2026-11-05T00:00:00Z"
            interval = "weekly"
            time_zone = "Europe/Berlin"
            [[subscriptions]]
            customer = "gappy"
            plan = "pro"
            effective_from = "2026-11-08T00:00:00Z"
            ends_at = "2026-11-22T12:00:00Z"
            "#;

    /// Plan changes inside a period (a new record at 10:37, a new plan version pricing
    /// tokens per group no more), a customer on the default plan before its record, Berlin
    /// weeks, a customer without any, a customer whose record ends (a gap: no subscription,
    /// no default plan), LATEST and MAX meters.
    fn split_catalog() -> Catalog {
        let specs: Vec<MeterSpec> = serde_json::from_str(
            r#"[{"slug":"users","event_type":"u","aggregation":"UNIQUE_COUNT","value_property":"$.user"},
                {"slug":"calls","event_type":"c","aggregation":"COUNT"},
                {"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n",
                 "group_by":{"model":"$.model"}},
                {"slug":"seats","event_type":"s","aggregation":"LATEST","value_property":"$.n"},
                {"slug":"peak","event_type":"p","aggregation":"MAX","value_property":"$.n"}]"#,
        )
        .unwrap();
        #[derive(serde::Deserialize)]
        struct F {
            plans: Vec<crate::config::PlanSpec>,
            subscriptions: Vec<crate::config::SubscriptionSpec>,
        }
        let f: F = toml::from_str(SPLIT_PLANS).unwrap();
        let rater = RaterConfig {
            default_plan: Some("metered".into()),
            ..Default::default()
        };
        Catalog::new(
            f.plans,
            f.subscriptions,
            &rater,
            &validate_meters(specs).unwrap(),
        )
        .unwrap()
    }

    const NOV1: u32 = 1_793_491_200; // 2026-11-01

    /// Customers of [`split_catalog`] with readable ids: plan changes inside a period
    /// (`acme`), Berlin weeks (`berlin`), the default plan only (`free`), the default plan,
    /// then a record, then a gap after its end (`gappy`), and the one that also gets the rare
    /// bad rows (`messy`, on the default plan).
    const CUSTOMERS: [&str; 5] = ["acme", "berlin", "free", "gappy", "messy"];

    /// Readable meters with their aggregations (`seats` and `peak` priced by some plans only).
    const METERS: [(&str, &str); 5] = [
        ("tokens", "SUM"),
        ("calls", "COUNT"),
        ("users", "UNIQUE_COUNT"),
        ("seats", "LATEST"),
        ("peak", "MAX"),
    ];

    /// A row of one window (a minute from `start`), its value `units` (for a `tokens` row,
    /// of model `group`; for a `users` row, the distinct value `u-<group>`).
    fn window_row(
        customer: &str,
        (meter, aggregation): (&str, &str),
        start: u32,
        group: usize,
        units: i128,
        latest_ms: i64,
    ) -> UsageRow {
        let model = ["a", "b", "c"][group];
        let mut r = row(customer, meter, 0, units, &[format!("u-{model}").as_str()]);
        r.aggregation = aggregation.into();
        r.start = start;
        r.end = start + 60;
        r.latest_time_ms = i64::from(start) * 1000 + latest_ms;
        r.latest_event_id = format!("e-{}", units % 3);
        if meter == "tokens" {
            r.group_key = format!("{{\"model\":\"{model}\"}}");
            r.group_names = vec!["model".into()];
            r.group_values = vec![model.into()];
        }
        r
    }

    /// One window start of a readable customer: 1 to 7 rows of its meters and groups in any
    /// order, as a window's rows come (the rows after the first reuse the cached look-up).
    fn burst() -> impl Strategy<Value = Vec<Op>> {
        let rows = proptest::collection::vec(
            (
                0..METERS.len(),
                0usize..3,
                0i128..10_000_000_000_000,
                0i64..60_000,
            ),
            1..8,
        );
        (
            0..CUSTOMERS.len(),
            0u32..40 * 24,                                 // hour since 2026-11-01
            prop_oneof![Just(0u32), Just(60), Just(3600)], // offset in the hour, s
            rows,
        )
            .prop_map(|(customer, hour, offset, rows)| {
                let start = NOV1 + hour * 3600 + offset;
                rows.into_iter()
                    .map(|(meter, group, units, latest_ms)| {
                        let r = window_row(
                            CUSTOMERS[customer],
                            METERS[meter],
                            start,
                            group,
                            units,
                            latest_ms,
                        );
                        Op::Row(Box::new(r))
                    })
                    .collect()
            })
    }

    /// A rare bad row: an unreadable customer id, or `messy`'s unreadable meter or
    /// aggregation, or a quantity that overflows (once added to a second one).
    fn bad_row() -> impl Strategy<Value = Vec<Op>> {
        let huge = 6_000_000_000_000_000_000i128 * 1_000_000_000;
        (0u32..40 * 24, 0usize..4).prop_map(move |(hour, kind)| {
            let start = NOV1 + hour * 3600;
            let r = match kind {
                0 => window_row("bad id!", METERS[0], start, 0, 1, 0),
                1 => window_row("messy", ("Bad Meter", "SUM"), start, 0, 1, 0),
                2 => window_row("messy", ("calls", "NOPE"), start, 0, 1, 0),
                _ => window_row("messy", METERS[0], start, 0, huge, 0),
            };
            vec![Op::Row(Box::new(r))]
        })
    }

    /// Windows of readable customers, mostly; a bad row or a failed widened read about one
    /// time in 30 each.
    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let failed = (0..CUSTOMERS.len()).prop_map(|c| vec![Op::Fail(CUSTOMERS[c].to_owned())]);
        let op = prop_oneof![30 => burst(), 1 => bad_row(), 1 => failed];
        proptest::collection::vec(op, 0..40).prop_map(|ops| ops.concat())
    }

    /// How much of the fold the cases of [`check_against_reference`] exercised: cases in all,
    /// and cases with usages, with rows skipped for no subscription, with a cached look-up
    /// reused, with a LATEST or MAX usage, and with a failed customer.
    #[derive(Debug, Default)]
    struct Strength {
        cases: u32,
        usages: u32,
        no_subscription: u32,
        cache_hits: u32,
        latest_or_max: u32,
        failed: u32,
    }

    /// Folds each case of `strategy` with [`Folder`] and with [`reference_fold`], requires
    /// equal results, and counts what the cases exercised.
    fn check_against_reference(strategy: impl Strategy<Value = Vec<Op>>) -> Strength {
        let cat = split_catalog();
        let strength = std::cell::RefCell::new(Strength::default());
        let config = proptest::test_runner::Config {
            failure_persistence: None,
            ..Default::default()
        };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let result = runner.run(&strategy, |ops| {
            let mut folder = Folder::new(&cat);
            for op in &ops {
                match op {
                    Op::Row(row) => folder.add(row),
                    Op::Fail(c) => folder.fail(std::slice::from_ref(c), FailReason::ReadFailed),
                }
            }
            let hits = folder.cache_hits;
            let got = folder.finish();
            let want = reference_fold(&ops, &cat);
            proptest::prop_assert_eq!(&got.usages, &want.usages);
            proptest::prop_assert_eq!(got.skipped, want.skipped);
            proptest::prop_assert_eq!(&got.failed, &want.failed);
            let s = &mut *strength.borrow_mut();
            s.cases += 1;
            let latest_or_max = want
                .usages
                .values()
                .any(|u| matches!(u.aggregation, Aggregation::Latest | Aggregation::Max));
            for (counts, seen) in [
                (&mut s.usages, !want.usages.is_empty()),
                (&mut s.no_subscription, want.skipped.no_subscription > 0),
                (&mut s.cache_hits, hits > 0),
                (&mut s.latest_or_max, latest_or_max),
                (&mut s.failed, !want.failed.is_empty()),
            ] {
                *counts += u32::from(seen);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        strength.into_inner()
    }

    /// Issue 21: the interned fold gives exactly what the fold of string keys gave, for
    /// every order of rows, failures and widened-read failures; and the cases do compare
    /// usages (most of them), reuse the cached look-up, skip rows without a subscription,
    /// and fold LATEST and MAX meters.
    #[test]
    fn the_interned_fold_equals_the_reference() {
        let s = check_against_reference(ops());
        eprintln!("{s:?}");
        let most = |n: u32| n * 2 > s.cases;
        let some = |n: u32| n * 10 > s.cases;
        assert!(s.cases >= 100, "{s:?}");
        assert!(most(s.usages) && most(s.cache_hits), "{s:?}");
        assert!(
            some(s.no_subscription) && some(s.latest_or_max) && some(s.failed),
            "{s:?}"
        );
    }
}
