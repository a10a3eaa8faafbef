//! Package pricing: usage is sold in blocks of `size` units at `price` per block; a started
//! block is a whole block (the count is rounded up). Zero usage buys no block.

use rust_decimal::{Decimal, RoundingStrategy};

use super::TierUse;

/// One line: `ceil(quantity / size)` packages at `price`. `None` on overflow.
pub fn price(size: Decimal, package_price: Decimal, quantity: Decimal) -> Option<Vec<TierUse>> {
    debug_assert!(size > Decimal::ZERO);
    if quantity.is_zero() {
        return Some(vec![]);
    }
    let packages = quantity
        .checked_div(size)?
        .round_dp_with_strategy(0, RoundingStrategy::ToPositiveInfinity);
    Some(vec![TierUse {
        tier: 1,
        from: Decimal::ZERO,
        up_to: None,
        quantity,
        unit_price: package_price,
        amount: packages.checked_mul(package_price)?,
        billed_units: Some(packages),
        kind: None,
        label: None,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_started_package_is_a_whole_package() {
        // 1000 tokens per package at 0.50
        for (qty, packages, amount) in [
            ("1", "1", "0.5"),
            ("999.999999999", "1", "0.5"),
            ("1000", "1", "0.5"), // exactly one block
            ("1000.000000001", "2", "1"),
            ("2500", "3", "1.5"),
            ("1000000000000", "1000000000", "500000000"), // 10^12 tokens
        ] {
            let lines = price(d("1000"), d("0.50"), d(qty)).unwrap();
            assert_eq!(lines[0].billed_units, Some(d(packages)), "{qty}");
            assert_eq!(lines[0].amount, d(amount), "{qty}");
        }
    }

    #[test]
    fn fractional_package_sizes_and_zero_usage() {
        assert!(price(d("1000"), d("0.5"), Decimal::ZERO)
            .unwrap()
            .is_empty());
        // 0.25 hours per block: 1.1 hours is 5 blocks
        let lines = price(d("0.25"), d("3"), d("1.1")).unwrap();
        assert_eq!(
            (lines[0].billed_units, lines[0].amount),
            (Some(d("5")), d("15"))
        );
    }
}
