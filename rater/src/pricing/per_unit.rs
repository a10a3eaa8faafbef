//! Per-unit pricing: quantity times unit price.

use rust_decimal::Decimal;

use super::{Priced, TierUse};

pub fn price(unit_price: Decimal, quantity: Decimal) -> Option<Priced> {
    let amount = quantity.checked_mul(unit_price)?;
    Some(Priced {
        amount,
        tiers: vec![TierUse {
            tier: 1,
            from: Decimal::ZERO,
            up_to: None,
            quantity,
            unit_price,
            amount,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        for (unit, qty, amount) in [
            ("0.00002", "1234567", "24.69134"),
            ("0", "5", "0"),
            ("1.5", "0", "0"),
            ("0.1", "3", "0.3"),
        ] {
            assert_eq!(
                price(d(unit), d(qty)).unwrap().amount,
                d(amount),
                "{unit} x {qty}"
            );
        }
    }
}
