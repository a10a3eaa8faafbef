//! Properties of rating, checked on random inputs: more usage never costs less (for every
//! model but volume tiers, whose documented price cliff is pinned here too), the arithmetic
//! lines always sum exactly to the charge, and the order in which rollups arrive never
//! changes a charge.

mod common;

use common::{catalog, d, plan, row, usage};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tally_rater::charge::{compute, Charge};
use tally_rater::usage::fold;
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
        let rate = |rows: &[tally_rater::usage::UsageRow]| -> Vec<Charge> {
            let (usages, _) = fold(rows, &c);
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
