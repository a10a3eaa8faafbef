//! Golden tests, computed by hand: in a billing period split by a subscription change, flat
//! fees and minimums are prorated by each part's time share of the period; whole periods pay
//! them in full. November 2026 has 30 days; every change here takes effect on November 11 at
//! 00:00 UTC, so the first part is 10/30 = 1/3 of the period and the second 20/30 = 2/3.

mod common;

use common::{meters, row};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::pricing::LineKind;
use tally_rater::rating::charge::compute_with;
use tally_rater::rating::usage::fold;
use tally_rater::{Catalog, RaterConfig};

/// Minutes from 2026-01-01 to the first of each month used here.
const OCT_1: u32 = 273 * 1440;
const NOV_1: u32 = 304 * 1440;
const DEC_1: u32 = 334 * 1440;
const DAY: u32 = 1440;

const PLANS: &str = r#"
[[plans]]
id = "flat-30"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "flat", meter = "tokens", amount = "30" }]
[[plans]]
id = "metered-min-15"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "tokens", unit_price = "0.01", minimum = "15" }]
[[plans]]
id = "flat-10"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "flat", meter = "tokens", amount = "10" }]
[[plans]]
id = "flat-20"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "flat", meter = "tokens", amount = "20" }]
[[plans]]
id = "yen-flat"
version = 1
currency = "JPY"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "flat", meter = "tokens", amount = "1000" }]
[[plans]]
id = "yen-min"
version = 1
currency = "JPY"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "tokens", unit_price = "1", minimum = "3000" }]

[[subscriptions]]
customer = "acme"
plan = "flat-30"
[[subscriptions]]
customer = "acme"
plan = "metered-min-15"
effective_from = "2026-11-11T00:00:00Z"
[[subscriptions]]
customer = "beta"
plan = "flat-10"
[[subscriptions]]
customer = "beta"
plan = "flat-20"
effective_from = "2026-11-11T00:00:00Z"
[[subscriptions]]
customer = "kaisha"
plan = "yen-flat"
[[subscriptions]]
customer = "kaisha"
plan = "yen-min"
effective_from = "2026-11-11T00:00:00Z"
"#;

fn catalog() -> Catalog {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
    }
    let f: F = toml::from_str(PLANS).expect("TOML");
    Catalog::new(f.plans, f.subscriptions, &RaterConfig::default(), &meters()).expect("valid")
}

/// (customer, plan, amount_minor) per charge, in fold order (customer, period, part); every
/// charge's lines balance.
fn rate(rows: &[tally_rater::rating::usage::UsageRow]) -> Vec<(String, String, i64)> {
    let c = catalog();
    let tally_rater::rating::usage::Folded {
        usages, skipped, ..
    } = fold(rows, &c);
    assert_eq!(skipped, Default::default());
    usages
        .values()
        .map(|u| {
            let sub = c
                .subscription_at(&u.customer, u.segment_from_ms)
                .expect("subscribed");
            let plan = c.plan_at(&sub.plan, u.segment_from_ms).expect("a version");
            let terms = c.terms(&sub, plan, &u.period, &u.meter);
            let ch = compute_with(u, plan, &terms)
                .expect("prices")
                .expect("priced");
            assert!(ch
                .tiers
                .iter()
                .all(|t| t.expected_amount() == Some(t.amount)));
            (ch.customer, ch.plan_id, ch.amount_minor)
        })
        .collect()
}

fn s(text: &str) -> String {
    text.to_owned()
}

#[test]
fn a_flat_fee_is_prorated_by_the_time_share_of_each_part() {
    let got = rate(&[
        row("acme", "m", "input", OCT_1 + 9 * DAY, "100"),
        row("acme", "m", "input", NOV_1 + 4 * DAY, "100"),
        row("beta", "m", "input", NOV_1 + 4 * DAY, "1"),
        row("beta", "m", "input", NOV_1 + 19 * DAY, "1"),
    ]);
    assert_eq!(
        got,
        vec![
            (s("acme"), s("flat-30"), 3000), // October, whole: the fee in full
            (s("acme"), s("flat-30"), 1000), // November 1-10: 30 x 1/3 = 10.00
            (s("beta"), s("flat-10"), 333),  // 10 x 1/3 = 3.333... -> 3.33
            (s("beta"), s("flat-20"), 1333), // 20 x 2/3 = 13.333... -> 13.33
        ]
    );
}

#[test]
fn a_minimum_is_prorated_by_the_time_share_of_each_part() {
    let got = rate(&[
        row("acme", "m", "input", NOV_1 + 4 * DAY, "100"),
        row("acme", "m", "input", NOV_1 + 19 * DAY, "500"),
        row("acme", "m", "input", DEC_1 + 2 * DAY, "100"),
        row("kaisha", "m", "input", NOV_1 + 4 * DAY, "7"),
        row("kaisha", "m", "input", NOV_1 + 19 * DAY, "500"),
    ]);
    assert_eq!(
        got,
        vec![
            // November 1-10, flat 30 x 1/3
            (s("acme"), s("flat-30"), 1000),
            // November 11-30: 500 x 0.01 = 5.00, below the minimum 15 x 2/3 = 10.00: + 5.00
            (s("acme"), s("metered-min-15"), 1000),
            // December, whole: 100 x 0.01 = 1.00, trued up to the full minimum 15.00
            (s("acme"), s("metered-min-15"), 1500),
            // November 1-10: 1000 JPY x 1/3 = 333.33... -> 333
            (s("kaisha"), s("yen-flat"), 333),
            // November 11-30: 500 x 1 = 500, minimum 3000 x 2/3 = 2000: + 1500
            (s("kaisha"), s("yen-min"), 2000),
        ]
    );
}

#[test]
fn the_prorated_minimum_line_says_so_and_the_share_is_exact_for_a_whole_period() {
    let c = catalog();
    let tally_rater::rating::usage::Folded { usages, .. } =
        fold(&[row("acme", "m", "input", NOV_1 + 19 * DAY, "500")], &c);
    let u = usages.values().next().expect("one part");
    assert_eq!(
        u.share(),
        "2".parse::<rust_decimal::Decimal>().unwrap() / rust_decimal::Decimal::from(3)
    );
    let plan = c
        .plan_at("metered-min-15", u.segment_from_ms)
        .expect("plan");
    let ch = compute_with(u, plan, &Default::default())
        .expect("prices")
        .expect("priced");
    let min = ch
        .tiers
        .iter()
        .find(|t| t.kind == Some(LineKind::Minimum))
        .expect("a minimum line");
    assert!(
        min.label
            .as_deref()
            .is_some_and(|l| l.starts_with("minimum 15 prorated x 0.6666")),
        "{min:?}"
    );
    let tally_rater::rating::usage::Folded { usages: whole, .. } =
        fold(&[row("acme", "m", "input", DEC_1, "1")], &c);
    assert_eq!(
        whole.values().next().expect("December").share(),
        rust_decimal::Decimal::ONE
    );
}
