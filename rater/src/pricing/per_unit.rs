//! Per-unit pricing: quantity times unit price, one line.

use rust_decimal::Decimal;

use super::TierUse;

/// One line `quantity × unit_price`; `None` on overflow.
pub fn price(unit_price: Decimal, quantity: Decimal) -> Option<Vec<TierUse>> {
    let amount = quantity.checked_mul(unit_price)?;
    Some(vec![TierUse::single(quantity, unit_price, amount)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn amount_is_quantity_times_unit_price_unrounded() {
        for (unit, qty, amount) in [
            ("0.00002", "1234567", "24.69134"),
            ("0", "5", "0"),
            ("1.5", "0", "0"),
            ("0.1", "3", "0.3"),
            ("0.000003", "1000000000000", "3000000"), // 10^12 tokens
            ("0.25", "0.5", "0.125"),                 // fractional quantity
        ] {
            let lines = price(d(unit), d(qty)).unwrap();
            assert_eq!(lines.len(), 1);
            assert_eq!(lines[0].amount, d(amount), "{unit} x {qty}");
        }
    }
}
