//! Flat fee: a fixed amount per billing period, whatever the quantity. A flat price is
//! attached to a meter and charged for every period in which the customer has committed
//! usage windows of that meter (even windows with quantity zero): the rater learns of a
//! customer's period only from usage.

use rust_decimal::Decimal;

use super::TierUse;

/// One line: one fee covering the whole quantity.
pub fn price(fee: Decimal, quantity: Decimal) -> TierUse {
    TierUse {
        tier: 1,
        from: Decimal::ZERO,
        up_to: None,
        quantity,
        unit_price: fee,
        amount: fee,
        billed_units: Some(Decimal::ONE),
        kind: None,
        label: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fee_does_not_depend_on_the_quantity() {
        let fee: Decimal = "49.99".parse().unwrap();
        for qty in ["0", "1", "1000000000000", "0.5"] {
            let line = price(fee, qty.parse().unwrap());
            assert_eq!(line.amount, fee, "{qty}");
            assert_eq!(line.expected_amount(), Some(fee));
        }
    }
}
