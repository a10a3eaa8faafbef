//! Graduated tiers: each tier prices only the part of the quantity that falls in it. A tier
//! with `up_to = N` covers quantities above the previous tier's bound, up to and including N;
//! the last tier is unbounded.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::exact;

use super::TierUse;

/// One tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Inclusive upper bound; absent on the last tier.
    #[serde(
        default,
        deserialize_with = "exact::opt_decimal",
        skip_serializing_if = "Option::is_none"
    )]
    pub up_to: Option<Decimal>,
    #[serde(deserialize_with = "exact::decimal")]
    pub unit_price: Decimal,
}

/// Checks that bounds rise strictly (tiers never overlap), only the last tier is unbounded
/// and prices are not negative. Shared by [`super::volume`]. Errors name the tier
/// (`tiers[1].up_to`, 0-based like the configuration).
pub fn validate(tiers: &[Tier]) -> Result<(), String> {
    if tiers.is_empty() {
        return Err("needs at least one tier".into());
    }
    let mut prev = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        let last = i + 1 == tiers.len();
        match (t.up_to, last) {
            (None, false) => {
                return Err(format!(
                    "tiers[{i}].up_to is missing but only the last tier may be unbounded"
                ))
            }
            (Some(_), true) => {
                return Err(format!("tiers[{i}].up_to must be absent on the last tier"))
            }
            (Some(b), false) if b <= prev => {
                return Err(format!(
                "tiers[{i}].up_to {b} overlaps the previous tier: it must be greater than {prev}"
            ))
            }
            _ => {}
        }
        if t.unit_price.is_sign_negative() && !t.unit_price.is_zero() {
            return Err(format!(
                "tiers[{i}].unit_price {} is negative",
                t.unit_price
            ));
        }
        prev = t.up_to.unwrap_or(prev);
    }
    Ok(())
}

/// Each tier prices the part of `quantity` inside it; one line per tier used. `None` on
/// overflow.
pub fn price(tiers: &[Tier], quantity: Decimal) -> Option<Vec<TierUse>> {
    let mut out = Vec::new();
    let mut from = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        if quantity <= from {
            break;
        }
        let top = t.up_to.map_or(quantity, |b| b.min(quantity));
        let q = top - from;
        let amount = q.checked_mul(t.unit_price)?;
        out.push(TierUse {
            tier: i + 1,
            from,
            up_to: t.up_to,
            quantity: q,
            unit_price: t.unit_price,
            amount,
            billed_units: None,
            kind: None,
            label: None,
        });
        from = top;
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    pub(crate) fn three_tiers() -> Vec<Tier> {
        vec![
            Tier {
                up_to: Some(d("100")),
                unit_price: d("0.05"),
            },
            Tier {
                up_to: Some(d("1000")),
                unit_price: d("0.03"),
            },
            Tier {
                up_to: None,
                unit_price: d("0.01"),
            },
        ]
    }

    fn amount(tiers: &[Tier], q: Decimal) -> Decimal {
        price(tiers, q).unwrap().iter().map(|t| t.amount).sum()
    }

    #[test]
    fn each_tier_prices_only_its_part_up_to_and_including_its_bound() {
        let t = three_tiers();
        for (qty, expected, used) in [
            ("0", "0", 0),
            ("1", "0.05", 1),
            ("100", "5", 1),       // the boundary belongs to tier 1
            ("100.5", "5.015", 2), // just past it: 100 x 0.05 + 0.5 x 0.03
            ("101", "5.03", 2),
            ("1000", "32", 2), // 5 + 900 x 0.03
            ("1001", "32.01", 3),
            ("2500", "47", 3),                   // 32 + 1500 x 0.01
            ("1000000000000", "10000000022", 3), // 10^12: 32 + (10^12 - 1000) x 0.01
            ("0.000000001", "0.00000000005", 1), // the smallest stored quantity
        ] {
            let lines = price(&t, d(qty)).unwrap();
            assert_eq!(amount(&t, d(qty)), d(expected), "quantity {qty}");
            assert_eq!(lines.len(), used, "quantity {qty}");
        }
    }

    #[test]
    fn overlapping_unbounded_or_negative_tiers_are_refused_naming_the_tier() {
        assert!(validate(&three_tiers()).is_ok());
        let mut bad = three_tiers();
        bad[1].up_to = Some(d("50"));
        assert!(validate(&bad)
            .unwrap_err()
            .contains("tiers[1].up_to 50 overlaps"));
        let mut bad = three_tiers();
        bad[1].up_to = Some(d("100"));
        assert!(validate(&bad).unwrap_err().contains("tiers[1].up_to"));
        let mut bad = three_tiers();
        bad[2].up_to = Some(d("5000"));
        assert!(validate(&bad).unwrap_err().contains("tiers[2].up_to"));
        let mut bad = three_tiers();
        bad[0].up_to = None;
        assert!(validate(&bad).unwrap_err().contains("tiers[0].up_to"));
        let mut bad = three_tiers();
        bad[2].unit_price = d("-0.01");
        assert!(validate(&bad).unwrap_err().contains("tiers[2].unit_price"));
        assert!(validate(&[]).is_err());
    }

    /// The oracle: walk the quantity one unit (or the fractional rest) at a time, pricing
    /// each step at the tier that holds its upper end.
    fn brute_force(tiers: &[Tier], q: Decimal) -> Decimal {
        let mut total = Decimal::ZERO;
        let mut at = Decimal::ZERO;
        while at < q {
            let step = (q - at).min(Decimal::ONE);
            let top = at + step;
            let tier = tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|b| top <= b))
                .unwrap();
            total += step * tier.unit_price;
            at = top;
        }
        total
    }

    /// The oracle for any bounds: walk one unit at a time, but never across a tier bound (a
    /// step ends at the bound it would cross), pricing each step at the tier that holds it.
    fn bounded_walk(tiers: &[Tier], q: Decimal) -> Decimal {
        let mut total = Decimal::ZERO;
        let mut at = Decimal::ZERO;
        while at < q {
            let tier = tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|b| at < b))
                .unwrap();
            let mut top = (at + Decimal::ONE).min(q);
            if let Some(b) = tier.up_to {
                top = top.min(b);
            }
            total += (top - at) * tier.unit_price;
            at = top;
        }
        total
    }

    proptest! {
        #[test]
        fn graduated_equals_a_walk_over_fractional_tier_bounds(
            units in 0i64..50_000, scale in 0u32..3,
            b1 in 1i64..5_000, b2 in 1i64..5_000, bound_scale in 0u32..3,
            p1 in 0i64..100_000, p2 in 0i64..100_000, p3 in 0i64..100_000,
        ) {
            // bounds like 12.34 and prices like 0.00567: steps stop at every bound
            let (b1, b2) = (Decimal::new(b1, bound_scale), Decimal::new(b2, bound_scale));
            let tiers = vec![
                Tier { up_to: Some(b1), unit_price: Decimal::new(p1, 5) },
                Tier { up_to: Some(b1 + b2), unit_price: Decimal::new(p2, 5) },
                Tier { up_to: None, unit_price: Decimal::new(p3, 5) },
            ];
            let q = Decimal::new(units, scale);
            prop_assert_eq!(amount(&tiers, q), bounded_walk(&tiers, q));
        }

        #[test]
        fn graduated_equals_a_unit_by_unit_walk_over_the_tiers(
            units in 0i64..3_000, scale in 0u32..3,
            b1 in 1i64..50, b2 in 1i64..50,
        ) {
            // integer bounds so every unit step lands on whole numbers around them
            let tiers = vec![
                Tier { up_to: Some(Decimal::from(b1)), unit_price: d("0.07") },
                Tier { up_to: Some(Decimal::from(b1 + b2)), unit_price: d("0.05") },
                Tier { up_to: None, unit_price: d("0.01") },
            ];
            let q = Decimal::new(units, scale);
            prop_assert_eq!(amount(&tiers, q), brute_force(&tiers, q));
        }

        #[test]
        fn tiers_partition_the_quantity_and_more_usage_never_costs_less(
            units in 0i64..10_000_000, scale in 0u32..4,
        ) {
            let q = Decimal::new(units, scale);
            let lines = price(&three_tiers(), q).unwrap();
            prop_assert_eq!(lines.iter().map(|t| t.quantity).sum::<Decimal>(), q);
            let more = amount(&three_tiers(), q + Decimal::new(1, scale));
            prop_assert!(more >= amount(&three_tiers(), q));
        }
    }
}
