//! Recurring fees and minimums at zero usage: the subscriptions in force, not usage, say
//! which periods owe them.
//!
//! A `flat` price is a fee per billing period and a `minimum` a commitment per period: both
//! are owed whether or not the meter saw usage. The rating pass learns of usage from the
//! rollups; this module names, from the catalog alone, every part of a billing period that a
//! subscription covers within the pass's range, and for each price of the part's plan
//! version with a flat fee or a minimum, a zero-usage [`MeterUsage`] when the fold has none
//! for that (customer, period, part, meter). Priced like any usage ([`crate::rating::charge`]), it
//! bills the fee (prorated by the part's time share) and trues the minimum up (prorated
//! likewise), so an idle period bills exactly what a period with zero usage would.
//!
//! Exactly once: the zero-usage charge has the key, so the id, that usage of the same part
//! would have (customer, period start, meter, group `{}`, plus the part's start when a
//! subscription change splits the period, plan id and version). A rerun computes the same
//! charges; usage arriving later re-rates that charge as a higher version of the same id.
//!
//! With a `usage_interval` the parts of a `flat` fee are those of the billing periods and
//! the parts of a minimum those of the usage periods (an annual fee, monthly minimums).
//!
//! Fees billed in advance (`billing = "in_advance"`, a `flat` fee only) are named here too
//! ([`advance_usages`]), from the catalog alone, and never as idle or usage charges: each part
//! of a billing period a subscription covers is charged from the part's start, for the
//! time it covers as far as the catalog knows then (to the period end, or to a change,
//! pause or end already recorded), on the invoice finalized at the part's start
//! ([`advance_invoice_period`]): the previous period's invoice when the part starts with the
//! period, an invoice of its own at the part's start otherwise. A change recorded later
//! (cancellation, plan change, pause) shortens the part, so the same charge is re-rated
//! lower: the invoicer credits the difference, the unused part, with a credit note against
//! the invoice that charged it (docs/PRICING.md "Fees billed in advance").
//!
//! Reads nothing: the work is bounded by the subscriptions and the periods of the range
//! (issue 14: a pass never scans history). Left out:
//! - the default plan (`rater.default_plan`): a customer without a subscription is known
//!   only by its usage, so its fees and minimums are billed in periods with usage only;
//! - price books (`dimensional`): a price book's charges are per group-by value, and its
//!   minimum trues up each group's charge; with no usage there is no group to bill.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tally_domain::{Aggregation, CustomerId, MeterSlug, Period};

use crate::catalog::zone::ZonedCycle;
use crate::catalog::{Catalog, Plan, Subscription};
use crate::pricing::{Price, PriceModel};
use crate::rating::charge::MeterUsage;
use crate::rating::usage::UsageKey;

/// Periods looked at per subscription at most (a range of years of weekly periods); the
/// bound keeps a bad cycle from looping.
const MAX_PERIODS: usize = 1000;

/// One part of a billing period that a subscription covers: the whole period, or from or
/// to a subscription change inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub period: Period,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Whether a price owes something at zero usage: a flat fee or a minimum (not on a price
/// book, whose charges are per group-by value).
pub fn owed_at_zero_usage(price: &Price) -> bool {
    let recurring = matches!(price.model, PriceModel::Flat { amount } if !amount.is_zero());
    let committed = price.minimum.is_some_and(|m| m > Decimal::ZERO);
    (recurring || committed) && !price.model.per_group()
}

/// The parts of `sub`'s periods of `cycle` (its billing or its usage cycle, as the fold
/// places usage of a price) that end after `horizon_ms` and have begun by `now_ms`, in time
/// order. A part runs from the period start (or the subscription's start) to the period end
/// (or the subscription's end).
pub fn parts(sub: &Subscription, cycle: &ZonedCycle, horizon_ms: i64, now_ms: i64) -> Vec<Part> {
    let mut out = Vec::new();
    // from the start of the period containing the horizon: a part that ended before the
    // horizon (a cancellation early in the period) still belongs to a period that did not
    let first = sub
        .from_ms
        .max(cycle.period_containing(horizon_ms).start_ms);
    if first >= sub.to_ms || first > now_ms {
        return out;
    }
    let mut period = cycle.period_containing(first);
    for _ in 0..MAX_PERIODS {
        let from_ms = period.start_ms.max(sub.from_ms);
        if from_ms > now_ms || from_ms >= sub.to_ms {
            break;
        }
        let to_ms = period.end_ms.min(sub.to_ms);
        if period.end_ms > horizon_ms && from_ms < to_ms {
            out.push(Part {
                period,
                from_ms,
                to_ms,
            });
        }
        period = cycle.next(&period);
    }
    out
}

/// The zero-usage usages a pass at `now_ms` must price besides `rated` (the fold's): for
/// every customer's subscription, every part of a period ending after `horizon_ms` that has
/// begun, and every price of the plan version effective at the part's start that owes
/// something at zero usage, unless the fold already has usage for it. Sorted by customer,
/// part and meter.
pub fn idle_usages(
    catalog: &Catalog,
    rated: &BTreeMap<UsageKey, MeterUsage>,
    horizon_ms: i64,
    now_ms: i64,
) -> Vec<MeterUsage> {
    idle_usages_by(catalog, rated, |_| horizon_ms, now_ms)
}

/// [`idle_usages`] with each customer's own horizon (a pass widened for corrected customers
/// only: `tally_platform::usage::Reach::of`).
pub fn idle_usages_by(
    catalog: &Catalog,
    rated: &BTreeMap<UsageKey, MeterUsage>,
    horizon_of: impl Fn(&CustomerId) -> i64,
    now_ms: i64,
) -> Vec<MeterUsage> {
    let mut customers: Vec<&CustomerId> = catalog.customers().collect();
    customers.sort();
    let mut out = Vec::new();
    for customer in customers {
        let horizon_ms = horizon_of(customer);
        for (sub, cycle) in catalog
            .subscriptions_of(customer)
            .iter()
            .flat_map(|s| s.cycles().into_iter().map(move |c| (s, c)))
        {
            for part in parts(sub, &cycle, horizon_ms, now_ms) {
                let Some(plan) = catalog.plan_of(sub, part.from_ms) else {
                    continue;
                };
                // each price in the periods of its own cycle (fees: billing, others: usage)
                let mut meters: Vec<(&MeterSlug, &Price)> = plan
                    .prices
                    .iter()
                    .filter(|(_, p)| {
                        owed_at_zero_usage(p) && !p.in_advance() && sub.cycle_for(Some(p)) == cycle
                    })
                    .collect();
                meters.sort_by(|a, b| a.0.cmp(b.0));
                for (meter, _) in meters {
                    let key: UsageKey = (
                        customer.clone(),
                        part.period,
                        part.from_ms,
                        meter.clone(),
                        "{}".to_owned(),
                    );
                    if rated.contains_key(&key) {
                        continue;
                    }
                    out.push(zero_usage(customer, meter, part));
                }
            }
        }
    }
    out
}

/// A fee billed in advance, to price: the zero usage of its part (its service period
/// and the time the part covers, which the fee is prorated by and which names the charge),
/// and the period of the invoice that carries it ([`advance_invoice_period`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    pub usage: MeterUsage,
    pub invoice_period: Period,
}

/// The period of the invoice that carries the in-advance fee of `part` (a part of a period
/// of the subscription's billing cycle): the invoice the invoicer finalizes at the part's
/// start (one grace after the end of its period, `invoice/src/invoice.rs`). A part starting
/// with its period is charged on the invoice of the usage period ending there (`usage`, the
/// subscription's usage cycle: the previous period with its usage and fees in arrears, or
/// alone; under an annual fee with monthly usage, December's), or of the billing cycle's
/// previous period when no usage period ends there; a part starting inside its period (a
/// subscription starting mid-period, a change, a trial's conversion, a resume) on an invoice
/// of its own, `[part start, part start)`, so its fee is due from the change on.
pub fn advance_invoice_period(billing: &ZonedCycle, usage: &ZonedCycle, part: &Part) -> Period {
    if part.from_ms == part.period.start_ms {
        let before = part.period.start_ms.saturating_sub(1);
        let previous = match usage.period_containing(before) {
            p if p.end_ms == part.period.start_ms => p,
            _ => billing.period_containing(before),
        };
        Period {
            start_ms: previous.start_ms,
            end_ms: part.period.start_ms,
        }
    } else {
        Period {
            start_ms: part.from_ms,
            end_ms: part.from_ms,
        }
    }
}

/// The in-advance fees a pass at `now_ms` must price: for every customer's subscription
/// record, every part of a billing period ending after `horizon_ms` that has begun by
/// `now_ms`, and every in-advance fee of the plan version pricing the part's start (the
/// pinned one, or the one effective then). Sorted by customer, part and meter. The default
/// plan (customers without a record) is left out: its fees are billed with usage, in arrears.
pub fn advance_usages(catalog: &Catalog, horizon_ms: i64, now_ms: i64) -> Vec<Advance> {
    advance_usages_by(catalog, |_| horizon_ms, now_ms)
}

/// [`advance_usages`] with each customer's own horizon (see [`idle_usages_by`]).
pub fn advance_usages_by(
    catalog: &Catalog,
    horizon_of: impl Fn(&CustomerId) -> i64,
    now_ms: i64,
) -> Vec<Advance> {
    let mut customers: Vec<&CustomerId> = catalog.customers().collect();
    customers.sort();
    let mut out = Vec::new();
    for customer in customers {
        for (sub, part, _, meter) in in_advance(catalog, customer, horizon_of(customer), now_ms) {
            out.push(Advance {
                usage: zero_usage(customer, meter, part),
                invoice_period: advance_invoice_period(&sub.cycle, &sub.usage_cycle, &part),
            });
        }
    }
    out
}

/// `customer`'s fees billed in advance that a pass at `now_ms` charges: for each subscription
/// record, each part of a billing period ending after `horizon_ms` that has begun, each
/// in-advance fee (meters sorted) of the plan version pricing the part's start.
fn in_advance<'c>(
    catalog: &'c Catalog,
    customer: &CustomerId,
    horizon_ms: i64,
    now_ms: i64,
) -> Vec<(&'c Subscription, Part, &'c Plan, &'c MeterSlug)> {
    let mut out = Vec::new();
    for sub in catalog.subscriptions_of(customer) {
        for part in parts(sub, &sub.cycle, horizon_ms, now_ms) {
            let Some(plan) = catalog.plan_of(sub, part.from_ms) else {
                continue;
            };
            let mut meters: Vec<&MeterSlug> = plan
                .prices
                .iter()
                .filter(|(_, p)| p.in_advance())
                .map(|(m, _)| m)
                .collect();
            meters.sort();
            out.extend(meters.into_iter().map(|m| (sub, part, plan, m)));
        }
    }
    out
}

/// A fee billed in advance as its charge is named: (service period start, part start, meter,
/// plan, plan version).
pub type AdvanceKey = (i64, i64, MeterSlug, String, u32);

/// `customer`'s fees billed in advance that `catalog` charges by `now_ms` (each part of a
/// billing period ending after `horizon_ms` that has begun), by the name of their charge.
pub fn advance_charged(
    catalog: &Catalog,
    customer: &CustomerId,
    horizon_ms: i64,
    now_ms: i64,
) -> std::collections::BTreeSet<AdvanceKey> {
    in_advance(catalog, customer, horizon_ms, now_ms)
        .into_iter()
        .map(|(_, part, plan, meter)| {
            let (period, from) = (part.period.start_ms, part.from_ms);
            (period, from, meter.clone(), plan.id.clone(), plan.version)
        })
        .collect()
}

/// The fees billed in advance that `before` charged `customer` by `now_ms` and `after` (the
/// catalog with one more subscription record) no longer charges at all: a change recorded
/// after a part began but taking effect at or before its start (backdated) removes the part
/// instead of shortening it. The rater re-rates a shortened part, and the invoicer credits
/// the unused part; a removed part's charge is never re-rated, so its fee would stay billed
/// in full (and a plan change would bill both plans' fees). Parts of periods ending after
/// `horizon_ms` (the record's start) are compared.
pub fn advance_removed(
    before: &Catalog,
    after: &Catalog,
    customer: &CustomerId,
    horizon_ms: i64,
    now_ms: i64,
) -> Vec<AdvanceKey> {
    let kept = advance_charged(after, customer, horizon_ms, now_ms);
    advance_charged(before, customer, horizon_ms, now_ms)
        .into_iter()
        .filter(|k| !kept.contains(k))
        .collect()
}

/// A part with no usage of `meter`: quantity zero, no windows, an empty usage span at the
/// part's start (so lineage lists nothing).
pub fn zero_usage(customer: &CustomerId, meter: &MeterSlug, part: Part) -> MeterUsage {
    MeterUsage {
        customer: customer.clone(),
        period: part.period,
        meter: meter.clone(),
        // not priced: zero is zero under every aggregation
        aggregation: Aggregation::Sum,
        group_key: "{}".to_owned(),
        group_names: vec![],
        group_values: vec![],
        segment_from_ms: part.from_ms,
        segment_to_ms: part.to_ms,
        quantity: Decimal::ZERO,
        windows: 0,
        first_window_ms: part.from_ms,
        last_window_end_ms: part.from_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PlanSpec, RaterConfig, SubscriptionSpec};
    use crate::rating::charge::compute_with;
    use proptest::prelude::*;
    use tally_domain::meter::{validate_meters, MeterSpec};

    const NOV_1: i64 = 1_793_491_200_000; // 2026-11-01T00:00:00Z
    const DEC_1: i64 = 1_796_083_200_000;
    const JAN_1: i64 = 1_798_761_600_000; // 2027-01-01
    const DAY: i64 = 86_400_000;

    fn catalog(subs: &str) -> Catalog {
        let meters: Vec<MeterSpec> = serde_json::from_str(
            r#"[{"slug":"calls","event_type":"c","aggregation":"COUNT"},
                {"slug":"seats","event_type":"s","aggregation":"MAX","value_property":"$.n"},
                {"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n",
                 "group_by":{"model":"$.model"}}]"#,
        )
        .unwrap();
        #[derive(serde::Deserialize)]
        struct F {
            plans: Vec<PlanSpec>,
            subscriptions: Vec<SubscriptionSpec>,
        }
        let text = format!(
            r#"
            [[plans]]
            id = "pro"
            version = 1
            currency = "USD"
            effective_from = "2026-01-01T00:00:00Z"
            prices = [
              {{ model = "flat", meter = "seats", amount = "30" }},
              {{ model = "per_unit", meter = "calls", unit_price = "0.01", minimum = "15" }},
              {{ model = "dimensional", meter = "tokens", dimensions = ["model"], rates = [{{ values = ["gpt-4o"], unit_price = "1" }}], minimum = "5" }},
            ]
            [[plans]]
            id = "metered"
            version = 1
            currency = "USD"
            effective_from = "2026-01-01T00:00:00Z"
            prices = [{{ model = "per_unit", meter = "calls", unit_price = "0.01" }}]
            {subs}"#
        );
        let f: F = toml::from_str(&text).unwrap();
        Catalog::new(
            f.plans,
            f.subscriptions,
            &RaterConfig::default(),
            &validate_meters(meters).unwrap(),
        )
        .unwrap()
    }

    fn minor(c: &Catalog, u: &MeterUsage) -> i64 {
        let sub = c.subscription_at(&u.customer, u.segment_from_ms).unwrap();
        let plan = c.plan_at(&sub.plan, u.segment_from_ms).unwrap();
        let terms = c.terms(&sub, plan, &u.period, &u.meter);
        compute_with(u, plan, &terms).unwrap().unwrap().amount_minor
    }

    #[test]
    fn an_idle_period_owes_its_fee_and_its_minimum_but_no_price_book() {
        let c = catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "pro""#,
        );
        // a pass on December 5th looking back 10 days: November (ended Dec 1) and December
        let idle = idle_usages(&c, &BTreeMap::new(), DEC_1 - 6 * DAY, DEC_1 + 4 * DAY);
        let got: Vec<(i64, &str, i64)> = idle
            .iter()
            .map(|u| (u.period.start_ms, u.meter.as_str(), minor(&c, u)))
            .collect();
        assert_eq!(
            got,
            vec![
                (NOV_1, "calls", 1500), // 0 calls, trued up to 15.00
                (NOV_1, "seats", 3000), // the fee, 30.00
                (DEC_1, "calls", 1500),
                (DEC_1, "seats", 3000),
            ]
        );
        assert!(idle.iter().all(|u| u.quantity.is_zero() && u.windows == 0));
    }

    #[test]
    fn usage_already_folded_is_not_billed_again() {
        let c = catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "pro""#,
        );
        let acme = CustomerId::new("acme").unwrap();
        let calls = MeterSlug::new("calls").unwrap();
        let part = Part {
            period: Period {
                start_ms: NOV_1,
                end_ms: DEC_1,
            },
            from_ms: NOV_1,
            to_ms: DEC_1,
        };
        let mut rated = BTreeMap::new();
        let mut busy = zero_usage(&acme, &calls, part);
        busy.quantity = Decimal::from(2000);
        busy.windows = 3;
        rated.insert(
            (acme.clone(), part.period, NOV_1, calls.clone(), "{}".into()),
            busy,
        );
        let idle = idle_usages(&c, &rated, NOV_1 + DAY, NOV_1 + 2 * DAY);
        let meters: Vec<&str> = idle.iter().map(|u| u.meter.as_str()).collect();
        assert_eq!(meters, vec!["seats"]);
    }

    #[test]
    fn a_subscription_starting_mid_period_pays_its_share_from_the_start() {
        // November has 30 days; from the 11th: 20/30 of the fee and of the minimum
        let c = catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "pro"
               effective_from = "2026-11-11T00:00:00Z""#,
        );
        let idle = idle_usages(&c, &BTreeMap::new(), NOV_1, DEC_1 - 1);
        let got: Vec<(i64, &str, i64)> = idle
            .iter()
            .map(|u| (u.segment_from_ms, u.meter.as_str(), minor(&c, u)))
            .collect();
        assert_eq!(
            got,
            vec![
                (NOV_1 + 10 * DAY, "calls", 1000), // 15 x 2/3 = 10.00
                (NOV_1 + 10 * DAY, "seats", 2000), // 30 x 2/3 = 20.00
            ]
        );
    }

    #[test]
    fn a_change_to_a_plan_without_fees_ends_them_at_the_change() {
        // pro until Nov 11, then metered (no fee, no minimum): 10/30 of each
        let c = catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "pro"
               [[subscriptions]]
               customer = "acme"
               plan = "metered"
               effective_from = "2026-11-11T00:00:00Z""#,
        );
        let idle = idle_usages(&c, &BTreeMap::new(), NOV_1, JAN_1 + DAY);
        let got: Vec<(i64, i64, &str, i64)> = idle
            .iter()
            .map(|u| {
                (
                    u.segment_from_ms,
                    u.segment_to_ms,
                    u.meter.as_str(),
                    minor(&c, u),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (NOV_1, NOV_1 + 10 * DAY, "calls", 500),  // 15 x 1/3
                (NOV_1, NOV_1 + 10 * DAY, "seats", 1000), // 30 x 1/3
            ]
        );
    }

    #[test]
    fn periods_that_have_not_begun_or_ended_before_the_horizon_owe_nothing_yet() {
        let c = catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "pro"
               effective_from = "2027-01-01T00:00:00Z""#,
        );
        assert!(idle_usages(&c, &BTreeMap::new(), NOV_1, DEC_1).is_empty());
        let c = catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "pro""#,
        );
        // the horizon is December 1st: November ended at it, so only December counts
        let idle = idle_usages(&c, &BTreeMap::new(), DEC_1, DEC_1);
        assert!(idle.iter().all(|u| u.period.start_ms == DEC_1));
        assert_eq!(idle.len(), 2);
    }

    /// Plans with a fee billed in advance: `adv` (30.00 a month in advance, calls per unit)
    /// and `big` (60.00 a month in advance), each also with a version 2 (45.00, 90.00) from
    /// 2027 for the pinning test.
    fn advance_catalog(subs: &str) -> Catalog {
        let meters: Vec<MeterSpec> = serde_json::from_str(
            r#"[{"slug":"calls","event_type":"c","aggregation":"COUNT"},
                {"slug":"seats","event_type":"s","aggregation":"MAX","value_property":"$.n"}]"#,
        )
        .unwrap();
        #[derive(serde::Deserialize)]
        struct F {
            plans: Vec<PlanSpec>,
            subscriptions: Vec<SubscriptionSpec>,
        }
        let mut text = String::new();
        for (id, v1, v2) in [("adv", "30", "45"), ("big", "60", "90")] {
            for (version, fee, from) in [(1, v1, "2026-01-01"), (2, v2, "2027-01-01")] {
                text.push_str(&format!(
                    r#"
                    [[plans]]
                    id = "{id}"
                    version = {version}
                    currency = "USD"
                    effective_from = "{from}T00:00:00Z"
                    prices = [
                      {{ model = "flat", meter = "seats", amount = "{fee}", billing = "in_advance" }},
                      {{ model = "per_unit", meter = "calls", unit_price = "0.01" }},
                    ]"#
                ));
            }
        }
        text.push('\n');
        text.push_str(subs);
        let f: F = toml::from_str(&text).unwrap();
        Catalog::new(
            f.plans,
            f.subscriptions,
            &RaterConfig::default(),
            &validate_meters(meters).unwrap(),
        )
        .unwrap()
    }

    /// (service part from, to, invoice period start, end, amount in cents, charge id) of every
    /// in-advance fee a pass at `now` prices (horizon `NOV_1`).
    fn advance_at(c: &Catalog, now: i64) -> Vec<(i64, i64, i64, i64, i64, String)> {
        advance_usages(c, NOV_1, now)
            .iter()
            .map(|a| {
                let u = &a.usage;
                let sub = c
                    .subscription_for(&u.customer, &u.meter, u.segment_from_ms)
                    .unwrap();
                let plan = c.plan_of(&sub, u.segment_from_ms).unwrap();
                let terms = c.terms(&sub, plan, &u.period, &u.meter);
                let charge = compute_with(u, plan, &terms).unwrap().unwrap();
                (
                    u.segment_from_ms,
                    u.segment_to_ms,
                    a.invoice_period.start_ms,
                    a.invoice_period.end_ms,
                    charge.amount_minor,
                    charge.charge_id,
                )
            })
            .collect()
    }

    const OCT_1: i64 = NOV_1 - 31 * DAY;

    #[test]
    fn an_in_advance_fee_is_charged_at_each_part_start_on_the_invoice_finalized_then() {
        let c = advance_catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "adv"
               effective_from = "2026-11-11T00:00:00Z""#,
        );
        // not begun on November 10th: nothing; no idle charge of the fee ever
        assert!(advance_at(&c, NOV_1 + 9 * DAY).is_empty());
        assert!(idle_usages(&c, &BTreeMap::new(), NOV_1, JAN_1).is_empty());
        let nov_11 = NOV_1 + 10 * DAY;
        // at its start: the rest of November, 30 x 20/30 = 20.00, on an invoice of its own
        let first = advance_at(&c, nov_11);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0..first[0].1, nov_11..DEC_1);
        assert_eq!((first[0].2, first[0].3, first[0].4), (nov_11, nov_11, 2000));
        // on December 1st: December, 30.00, on November's invoice (finalized then)
        let both = advance_at(&c, DEC_1);
        assert_eq!(both.len(), 2);
        assert_eq!(both[0], first[0]);
        assert_eq!(
            (both[1].0, both[1].1, both[1].2, both[1].3, both[1].4),
            (DEC_1, JAN_1, NOV_1, DEC_1, 3000)
        );
    }

    #[test]
    fn a_change_recorded_later_lowers_the_old_charge_by_its_unused_part() {
        let before = advance_catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "adv""#,
        );
        let after = advance_catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "adv"
               [[subscriptions]]
               customer = "acme"
               plan = "big"
               effective_from = "2026-11-21T00:00:00Z""#,
        );
        let nov_21 = NOV_1 + 20 * DAY;
        // on November 1st, November's whole fee on October's invoice
        let was = advance_at(&before, NOV_1);
        assert_eq!(was.len(), 1);
        assert_eq!((was[0].2, was[0].3, was[0].4), (OCT_1, NOV_1, 3000));
        // once the change is recorded: the same charge, 30 x 20/30 = 20.00 (10.00 credited),
        // and big's 60 x 10/30 = 20.00 from the change on an invoice of its own
        let now = advance_at(&after, nov_21);
        assert_eq!(now.len(), 2);
        assert_eq!(now[0].5, was[0].5, "the same charge, re-rated");
        assert_eq!(
            (now[0].0, now[0].1, now[0].4),
            (NOV_1, nov_21, 2000),
            "credit {}",
            was[0].4 - now[0].4
        );
        assert_eq!(
            (now[1].0, now[1].1, now[1].2, now[1].3, now[1].4),
            (nov_21, DEC_1, nov_21, nov_21, 2000)
        );
        assert_ne!(now[1].5, now[0].5);
    }

    #[test]
    fn a_backdated_change_removes_a_charged_part_and_a_later_one_only_shortens_it() {
        let acme = CustomerId::new("acme").unwrap();
        let before = advance_catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "adv"
               effective_from = "2026-11-01T00:00:00Z""#,
        );
        let with = |record: &str| {
            advance_catalog(&format!(
                r#"[[subscriptions]]
                   customer = "acme"
                   plan = "adv"
                   effective_from = "2026-11-01T00:00:00Z"
                   [[subscriptions]]
                   customer = "acme"
                   {record}"#
            ))
        };
        let nov_30 = DEC_1 - DAY;
        let now = DEC_1 + 4 * DAY; // December's fee was charged on Dec 1
        let december = |plan: &str| {
            (
                DEC_1,
                DEC_1,
                MeterSlug::new("seats").unwrap(),
                plan.to_owned(),
                1,
            )
        };
        // cancelled on Dec 5 back to Nov 30 or to Dec 1: December's part is gone, not shortened
        for at in ["2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z"] {
            let cancelled = with(&format!(
                "plan = \"adv\"\nstate = \"cancelled\"\neffective_from = \"{at}\""
            ));
            let from = chrono::DateTime::parse_from_rfc3339(at)
                .unwrap()
                .timestamp_millis();
            assert_eq!(
                advance_removed(&before, &cancelled, &acme, from, now),
                vec![december("adv")],
                "{at}"
            );
        }
        // a plan change effective Dec 1 recorded on Dec 5: adv's December fee is gone too
        let changed = with("plan = \"big\"\neffective_from = \"2026-12-01T00:00:00Z\"");
        assert_eq!(
            advance_removed(&before, &changed, &acme, DEC_1, now),
            vec![december("adv")]
        );
        // cancelled at Dec 3 (after December's part began): the part is shortened and its
        // charge re-rated, nothing removed; nor before the part begins (now Nov 30)
        let later = with(
            "plan = \"adv\"\nstate = \"cancelled\"\neffective_from = \"2026-12-03T00:00:00Z\"",
        );
        assert!(advance_removed(&before, &later, &acme, DEC_1 + 2 * DAY, now).is_empty());
        let early = with(
            "plan = \"adv\"\nstate = \"cancelled\"\neffective_from = \"2026-12-01T00:00:00Z\"",
        );
        assert!(advance_removed(&before, &early, &acme, DEC_1, nov_30).is_empty());
    }

    #[test]
    fn a_pinned_version_keeps_its_fee_and_an_unpinned_one_follows() {
        let c = advance_catalog(
            r#"[[subscriptions]]
               customer = "pinned"
               plan = "adv"
               plan_version = 1
               [[subscriptions]]
               customer = "floating"
               plan = "adv""#,
        );
        // January 2027 (version 2 from Jan 1): charged on January 1st, on December's invoice
        let jan: Vec<i64> = advance_at(&c, JAN_1)
            .iter()
            .filter(|a| a.0 == JAN_1)
            .map(|a| a.4)
            .collect();
        // customers sorted: floating (v2, 45.00), then pinned (v1, 30.00)
        assert_eq!(jan, vec![4500, 3000]);
    }

    #[test]
    fn an_annual_fee_in_advance_rides_on_the_last_monthly_usage_invoice_before_its_year() {
        let c = advance_catalog(
            r#"[[subscriptions]]
               customer = "acme"
               plan = "adv"
               interval = "annual"
               usage_interval = "monthly""#,
        );
        // January 1st, 2027: the year's fee (version 2, 45.00) is charged whole, on the
        // invoice of December's usage, [Dec 1, Jan 1), finalized then
        let got = advance_at(&c, JAN_1);
        let year = got.iter().find(|a| a.0 == JAN_1).expect("the 2027 fee");
        assert_eq!((year.2, year.3, year.4), (DEC_1, JAN_1, 4500));
    }

    proptest! {
        /// Whatever the change instant, the in-advance fees of a period split by a change add
        /// up to the whole fee within one minor unit per part: the old part's charge is the
        /// part it covered (its unused rest credited), the new part's runs from the change to
        /// the period end. The old part's invoice is finalized at the period start, the new
        /// one's at the change; a part never reaches past its period.
        #[test]
        fn advance_fees_of_a_split_period_add_up_and_are_due_at_their_starts(
            offset_min in 1i64..(30 * 1440 - 1),
        ) {
            let change = NOV_1 + offset_min * 60_000;
            let at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(change)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let c = advance_catalog(&format!(
                r#"[[subscriptions]]
                   customer = "acme"
                   plan = "adv"
                   [[subscriptions]]
                   customer = "acme"
                   plan = "adv"
                   effective_from = "{at}""#
            ));
            let got = advance_at(&c, DEC_1 - 1);
            prop_assert_eq!(got.len(), 2);
            prop_assert_eq!((got[0].0, got[0].1, got[0].2, got[0].3), (NOV_1, change, OCT_1, NOV_1));
            prop_assert_eq!((got[1].0, got[1].1, got[1].2, got[1].3), (change, DEC_1, change, change));
            prop_assert!((got[0].4 + got[1].4 - 3000).abs() <= 1, "{:?}", got);
            // each part its share, 3000 x minutes / 43200, rounded to the nearest cent (a
            // share that is exactly half a cent may fall either side: the share is a
            // 28-digit decimal)
            prop_assert!((got[0].4 * 43_200 - 3000 * offset_min).abs() <= 21_600, "{:?}", got);
            prop_assert!((got[1].4 * 43_200 - 3000 * (43_200 - offset_min)).abs() <= 21_600);
        }
    }

    proptest! {
        /// Whatever the change instant, the parts of a period cover it exactly, never overlap,
        /// and each fee is billed once per part: the prorated fees of the parts add up to the
        /// whole fee within one minor unit per part.
        #[test]
        fn parts_cover_the_period_once_and_fees_add_up(offset_min in 1i64..(30 * 1440 - 1)) {
            let change = NOV_1 + offset_min * 60_000;
            let at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(change)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let c = catalog(&format!(
                r#"[[subscriptions]]
                   customer = "acme"
                   plan = "pro"
                   [[subscriptions]]
                   customer = "acme"
                   plan = "pro"
                   effective_from = "{at}""#
            ));
            let idle = idle_usages(&c, &BTreeMap::new(), NOV_1, DEC_1 - 1);
            let seats: Vec<&MeterUsage> =
                idle.iter().filter(|u| u.meter.as_str() == "seats").collect();
            prop_assert_eq!(seats.len(), 2);
            prop_assert_eq!(seats[0].segment_from_ms, NOV_1);
            prop_assert_eq!(seats[0].segment_to_ms, change);
            prop_assert_eq!(seats[1].segment_from_ms, change);
            prop_assert_eq!(seats[1].segment_to_ms, DEC_1);
            let total: i64 = seats.iter().map(|u| minor(&c, u)).sum();
            prop_assert!((total - 3000).abs() <= 1, "{}", total);
            let shares: Decimal = seats.iter().map(|u| u.share()).sum();
            prop_assert!((shares - Decimal::ONE).abs() < Decimal::new(1, 20));
        }

        /// An idle charge is what pricing zero usage gives: never negative, never more than
        /// the fee plus the minimum (before tax), and zero-usage keys are unique.
        #[test]
        fn idle_charges_are_bounded_and_unique(days in 0i64..400, back in 0i64..100) {
            let c = catalog(
                r#"[[subscriptions]]
                   customer = "acme"
                   plan = "pro"
                   billing_anchor_day = 15
                   time_zone = "America/New_York""#,
            );
            let now = NOV_1 + days * DAY;
            let idle = idle_usages(&c, &BTreeMap::new(), now - back * DAY, now);
            let mut keys = std::collections::BTreeSet::new();
            for u in &idle {
                prop_assert!(keys.insert((u.period.start_ms, u.segment_from_ms, u.meter.clone())));
                prop_assert!(u.period.end_ms > now - back * DAY && u.segment_from_ms <= now);
                let m = minor(&c, u);
                prop_assert!(m == 1500 || m == 3000, "{}", m);
            }
            prop_assert_eq!(idle.len() % 2, 0);
        }
    }
}
