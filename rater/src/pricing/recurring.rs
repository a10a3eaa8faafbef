//! Recurring fees and minimums at zero usage: the subscriptions in force, not usage, say
//! which periods owe them.
//!
//! A `flat` price is a fee per billing period and a `minimum` a commitment per period: both
//! are owed whether or not the meter saw usage. The rating pass learns of usage from the
//! rollups; this module names, from the catalog alone, every part of a billing period that a
//! subscription covers within the pass's range, and for each price of the part's plan
//! version with a flat fee or a minimum, a zero-usage [`MeterUsage`] when the fold has none
//! for that (customer, period, part, meter). Priced like any usage ([`crate::charge`]), it
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
//! Reads nothing: the work is bounded by the subscriptions and the periods of the range
//! (issue 14: a pass never scans history). Left out:
//! - the default plan (`rater.default_plan`): a customer without a subscription is known
//!   only by its usage, so its fees and minimums are billed in periods with usage only;
//! - price books (`dimensional`): a price book's charges are per group-by value, and its
//!   minimum trues up each group's charge; with no usage there is no group to bill.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tally_domain::{Aggregation, CustomerId, MeterSlug, Period};

use crate::catalog::{Catalog, Subscription};
use crate::charge::MeterUsage;
use crate::pricing::{Price, PriceModel};
use crate::usage::UsageKey;
use crate::zone::ZonedCycle;

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
    let mut customers: Vec<&CustomerId> = catalog.customers().collect();
    customers.sort();
    let mut out = Vec::new();
    for customer in customers {
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
                    .filter(|(_, p)| owed_at_zero_usage(p) && sub.cycle_for(Some(p)) == cycle)
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
    use crate::charge::compute_with;
    use crate::config::{PlanSpec, RaterConfig, SubscriptionSpec};
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
