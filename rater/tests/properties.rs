//! Properties of rating, checked on random inputs: more usage never costs less (for every
//! model but volume tiers, whose documented price cliff is pinned here too), the arithmetic
//! lines always sum exactly to the charge, and the order in which rollups arrive never
//! changes a charge.

mod common;

use common::{catalog, d, plan, row, usage};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_rater::rating::charge::{compute, Charge};
use tally_rater::rating::usage::fold;
use tally_rater::Catalog;

/// Monotone models, with and without allowance and commitments, in three currencies.
const MONOTONE: &[(&str, &str)] = &[
    ("USD", r#"model = "per_unit", unit_price = "0.000003""#),
    (
        "JPY",
        r#"model = "graduated", tiers = [{ up_to = "500", unit_price = "3" }, { unit_price = "1.5" }]"#,
    ),
    (
        "BHD",
        r#"model = "package", package_size = "1000", package_price = "0.125""#,
    ),
    ("USD", r#"model = "flat", amount = "49.99""#),
    (
        "USD",
        r#"model = "per_unit", unit_price = "0.01", free_units = "1000", minimum = "5", maximum = "50""#,
    ),
    (
        "BHD",
        r#"model = "graduated", tiers = [{ up_to = "10", unit_price = "0.1005" }, { unit_price = "0.05" }], free_units = "3""#,
    ),
];

fn charge(c: &Catalog, q: Decimal) -> Charge {
    compute(&usage(q), plan(c))
        .expect("prices")
        .expect("priced")
}

fn quantity() -> impl Strategy<Value = Decimal> {
    (0i64..2_000_000_000_000, 0u32..10).prop_map(|(units, scale)| Decimal::new(units, scale))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn more_usage_never_costs_less(which in 0..MONOTONE.len(), q in quantity(), extra in quantity()) {
        let (currency, price) = MONOTONE[which];
        let c = catalog(currency, price);
        prop_assert!(charge(&c, q + extra).amount_minor >= charge(&c, q).amount_minor);
    }

    #[test]
    fn lines_sum_exactly_to_the_charge_and_charges_to_the_total(
        which in 0..MONOTONE.len(),
        qs in proptest::collection::vec(quantity(), 1..20),
    ) {
        let (currency, price) = MONOTONE[which];
        let c = catalog(currency, price);
        let cur = plan(&c).currency;
        let mut total = Decimal::ZERO;
        let mut total_minor = 0i64;
        for q in qs {
            let ch = charge(&c, q);
            let lines: Decimal = ch.tiers.iter().map(|t| t.amount).sum();
            prop_assert_eq!(cur.round(lines), ch.amount);
            prop_assert_eq!(ch.tiers.iter().map(|t| t.quantity).sum::<Decimal>(), q);
            for t in &ch.tiers {
                prop_assert_eq!(t.expected_amount(), Some(t.amount));
            }
            prop_assert_eq!(cur.from_minor(ch.amount_minor), ch.amount);
            total += ch.amount;
            total_minor += ch.amount_minor;
        }
        prop_assert_eq!(cur.to_minor(total).expect("fits"), total_minor);
    }

    #[test]
    fn rating_is_independent_of_the_order_rollups_arrive_in(
        windows in proptest::collection::vec((0usize..3, 0usize..2, 0u32..1000, 0i64..10_000_000), 1..60),
        seed in any::<u64>(),
    ) {
        let c = catalog(
            "USD",
            r#"model = "dimensional", dimensions = ["model", "kind"], default_unit_price = "0.000001",
               rates = [{ values = ["a", "input"], unit_price = "0.0000025" }]"#,
        );
        let customers = ["acme", "globex", "initech"];
        let models = ["a", "b"];
        let rows: Vec<_> = windows
            .iter()
            .map(|&(cu, m, minute, q)| {
                row(customers[cu], models[m], if q % 2 == 0 { "input" } else { "output" }, minute, &q.to_string())
            })
            .collect();
        let rate = |rows: &[tally_rater::rating::usage::UsageRow]| -> Vec<Charge> {
            let tally_rater::rating::usage::Folded { usages, .. } = fold(rows, &c);
            usages.values().filter_map(|u| compute(u, plan(&c)).expect("prices")).collect()
        };
        let in_order = rate(&rows);
        let mut shuffled: Vec<_> = rows.clone();
        // a deterministic shuffle from the seed
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(rate(&shuffled), in_order);
    }
}

#[test]
fn volume_tiers_have_a_documented_cliff_at_the_boundary() {
    let c = catalog(
        "USD",
        r#"model = "volume", tiers = [{ up_to = "100", unit_price = "0.02" }, { unit_price = "0.015" }]"#,
    );
    // 100 x 0.02 = 2.00 but 101 x 0.015 = 1.515 -> 1.52: volume pricing is not monotone
    assert_eq!(charge(&c, d("100")).amount_minor, 200);
    assert_eq!(charge(&c, d("101")).amount_minor, 152);
}

/// A catalog where every term applies: a graduated USD plan billed in JPY (156.37 per USD),
/// a 15% coupon and 0.50 off for ever, and 19% tax.
fn terms_catalog() -> Catalog {
    common::file_catalog(
        r#"
        [[plans]]
        id = "p"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "graduated", meter = "tokens", tiers = [{ up_to = "1000", unit_price = "0.002" }, { unit_price = "0.0015" }] }]
        [[subscriptions]]
        customer = "acme"
        plan = "p"
        currency = "JPY"
        tax_region = "DE"
        coupons = [
          { id = "P15", percent_off = "15", starts = "2026-01-01T00:00:00Z", duration = "forever" },
          { id = "OFF", amount_off = "0.50", meter = "tokens", starts = "2026-01-01T00:00:00Z", duration = "forever" },
        ]
        [[tax_rates]]
        region = "DE"
        rate_percent = "19"
        effective_from = "2020-01-01T00:00:00Z"
        [[fx_rates]]
        from = "USD"
        to = "JPY"
        rate = "156.37"
        effective_from = "2020-01-01T00:00:00Z"
        "#,
    )
    .expect("valid")
}

fn charge_with_terms(c: &Catalog, q: Decimal) -> Charge {
    let u = usage(q);
    let sub = c.subscription(&u.customer).expect("subscribed");
    let p = plan(c);
    let terms = c.terms(&sub, p, &u.period, &u.meter);
    tally_rater::rating::charge::compute_with(&u, p, &terms)
        .expect("prices")
        .expect("priced")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn with_coupons_fx_and_tax_more_usage_never_costs_less_and_tax_adds_up(
        q in quantity(), extra in quantity(),
    ) {
        let c = terms_catalog();
        let (a, b) = (charge_with_terms(&c, q), charge_with_terms(&c, q + extra));
        prop_assert!(b.amount_minor >= a.amount_minor);
        prop_assert!(b.amount_with_tax_minor >= a.amount_with_tax_minor);
        for ch in [&a, &b] {
            prop_assert_eq!(ch.currency, "JPY");
            prop_assert!(ch.amount_minor <= ch.amount_before_discounts_minor);
            prop_assert!(ch.amount_minor >= 0);
            prop_assert_eq!(ch.amount_with_tax_minor, ch.amount_minor + ch.tax_minor);
        }
    }
}
