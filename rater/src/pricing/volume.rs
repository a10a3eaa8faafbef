//! Volume tiers: the whole quantity is priced at the unit price of the one tier it falls in
//! (a tier with `up_to = N` holds quantities up to and including N). Tiers are validated like
//! graduated tiers ([`super::graduated::validate`]).

use rust_decimal::Decimal;

use super::{Tier, TierUse};

/// One line: the whole quantity at its tier's price; no line for zero. `None` on overflow.
pub fn price(tiers: &[Tier], quantity: Decimal) -> Option<Vec<TierUse>> {
    if quantity.is_zero() {
        return Some(vec![]);
    }
    let mut from = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        if t.up_to.is_none_or(|b| quantity <= b) {
            return Some(vec![TierUse {
                tier: i + 1,
                from,
                up_to: t.up_to,
                quantity,
                unit_price: t.unit_price,
                amount: quantity.checked_mul(t.unit_price)?,
                billed_units: None,
                kind: None,
                label: None,
            }]);
        }
        from = t.up_to.unwrap_or(from);
    }
    debug_assert!(false, "validated tiers end with an unbounded tier");
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    use crate::pricing::graduated::tests::three_tiers as tiers;

    #[test]
    fn the_whole_quantity_takes_the_price_of_its_tier() {
        for (qty, amount, tier) in [
            ("1", "0.05", 1),
            ("100", "5", 1),       // the boundary belongs to tier 1
            ("100.5", "3.015", 2), // everything at tier 2's price
            ("1000", "30", 2),
            ("1001", "10.01", 3),
            ("1000000000000", "10000000000", 3), // 10^12
        ] {
            let lines = price(&tiers(), d(qty)).unwrap();
            assert_eq!(lines.len(), 1, "{qty}");
            assert_eq!((lines[0].amount, lines[0].tier), (d(amount), tier), "{qty}");
            assert_eq!(lines[0].quantity, d(qty));
        }
    }

    #[test]
    fn zero_usage_has_no_line() {
        assert!(price(&tiers(), Decimal::ZERO).unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn the_line_prices_the_whole_quantity_at_one_tier(units in 1i64..10_000_000, scale in 0u32..4) {
            let q = Decimal::new(units, scale);
            let lines = price(&tiers(), q).unwrap();
            prop_assert_eq!(lines[0].amount, q * lines[0].unit_price);
            prop_assert!(lines[0].from < q && lines[0].up_to.is_none_or(|b| q <= b));
        }
    }
}
