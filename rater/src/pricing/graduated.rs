//! Graduated tiers: each tier prices only the part of the quantity that falls in it. A tier
//! with `up_to = N` covers quantities above the previous tier's bound, up to and including N;
//! the last tier is unbounded.

use rust_decimal::Decimal;
use serde::Deserialize;
use tally_domain::exact;

use super::{Priced, TierUse};

/// One tier.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Inclusive upper bound; absent on the last tier.
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub up_to: Option<Decimal>,
    #[serde(deserialize_with = "exact::decimal")]
    pub unit_price: Decimal,
}

/// Checks that bounds rise strictly, only the last tier is unbounded, prices are not negative.
pub fn validate(tiers: &[Tier]) -> Result<(), String> {
    if tiers.is_empty() {
        return Err("graduated price needs at least one tier".into());
    }
    let mut prev = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        let last = i + 1 == tiers.len();
        match (t.up_to, last) {
            (None, false) => {
                return Err(format!(
                    "tier {} has no up_to but is not the last tier",
                    i + 1
                ))
            }
            (Some(_), true) => return Err(format!("the last tier ({}) must have no up_to", i + 1)),
            (Some(b), false) if b <= prev => {
                return Err(format!(
                    "tier {} up_to {b} must be greater than {prev}",
                    i + 1
                ))
            }
            _ => {}
        }
        if t.unit_price.is_sign_negative() && !t.unit_price.is_zero() {
            return Err(format!("tier {} unit_price is negative", i + 1));
        }
        prev = t.up_to.unwrap_or(prev);
    }
    Ok(())
}

pub fn price(tiers: &[Tier], quantity: Decimal) -> Option<Priced> {
    let mut out = Vec::new();
    let mut from = Decimal::ZERO;
    let mut total = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        if quantity <= from {
            break;
        }
        let top = t.up_to.map_or(quantity, |b| b.min(quantity));
        let q = top - from;
        let amount = q.checked_mul(t.unit_price)?;
        total = total.checked_add(amount)?;
        out.push(TierUse {
            tier: i + 1,
            from,
            up_to: t.up_to,
            quantity: q,
            unit_price: t.unit_price,
            amount,
        });
        from = top;
    }
    Some(Priced {
        amount: total,
        tiers: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn tiers() -> Vec<Tier> {
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

    #[test]
    fn table_including_exact_boundaries() {
        let t = tiers();
        for (qty, amount, used) in [
            ("0", "0", 0),
            ("1", "0.05", 1),
            ("100", "5", 1),       // the boundary belongs to tier 1
            ("100.5", "5.015", 2), // just past it
            ("101", "5.03", 2),
            ("1000", "32", 2),
            ("1001", "32.01", 3),
            ("2500", "47", 3),
        ] {
            let p = price(&t, d(qty)).unwrap();
            assert_eq!(p.amount, d(amount), "quantity {qty}");
            assert_eq!(p.tiers.len(), used, "quantity {qty}");
        }
    }

    #[test]
    fn validation() {
        assert!(validate(&tiers()).is_ok());
        let mut bad = tiers();
        bad[1].up_to = Some(d("50"));
        assert!(validate(&bad).is_err());
        let mut bad = tiers();
        bad[2].up_to = Some(d("5000"));
        assert!(validate(&bad).is_err());
        assert!(validate(&[]).is_err());
    }

    proptest! {
        #[test]
        fn tiers_partition_the_quantity(units in 0i64..10_000_000, scale in 0u32..4) {
            let q = Decimal::new(units, scale);
            let p = price(&tiers(), q).unwrap();
            prop_assert_eq!(p.tiers.iter().map(|t| t.quantity).sum::<Decimal>(), q);
            prop_assert_eq!(p.tiers.iter().map(|t| t.amount).sum::<Decimal>(), p.amount);
            // graduated pricing is monotone: more usage never costs less
            let more = price(&tiers(), q + Decimal::ONE).unwrap();
            prop_assert!(more.amount >= p.amount);
        }
    }
}
