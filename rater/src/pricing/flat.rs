//! Flat fee: a fixed amount per billing period, whatever the quantity. A flat price is
//! attached to a meter and charged for every period (or part of one) that a subscription to
//! its plan covers, with or without usage of the meter: [`crate::rating::recurring`] names the idle
//! ones from the catalog. A customer without a subscription (the default plan) is known only
//! by its usage and pays the fee in periods with usage windows of the meter.
//!
//! In a part of a period split by a subscription change, the fee is prorated by the part's
//! time share (`share`, see [`crate::rating::charge::MeterUsage::share`]): the line bills `share`
//! units of the fee, so `amount = share × fee`, unrounded (the charge rounds once).

use rust_decimal::Decimal;

use super::TierUse;

/// One line: the fee times the period share (1 for a whole period), covering the whole
/// quantity; `None` on overflow.
pub fn price(fee: Decimal, quantity: Decimal, share: Decimal) -> Option<TierUse> {
    debug_assert!(!share.is_sign_negative() && share <= Decimal::ONE);
    Some(TierUse {
        tier: 1,
        from: Decimal::ZERO,
        up_to: None,
        quantity,
        unit_price: fee,
        amount: share.checked_mul(fee)?,
        billed_units: Some(share),
        kind: None,
        label: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fee_does_not_depend_on_the_quantity() {
        let fee: Decimal = "49.99".parse().unwrap();
        for qty in ["0", "1", "1000000000000", "0.5"] {
            let line = price(fee, qty.parse().unwrap(), Decimal::ONE).unwrap();
            assert_eq!(line.amount, fee, "{qty}");
            assert_eq!(line.expected_amount(), Some(fee));
        }
    }

    #[test]
    fn a_part_of_a_period_pays_its_time_share() {
        let line = price(
            "30".parse().unwrap(),
            Decimal::ZERO,
            "0.25".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(line.amount, "7.50".parse::<Decimal>().unwrap());
        assert_eq!(line.billed_units, Some("0.25".parse().unwrap()));
        assert_eq!(line.expected_amount(), Some(line.amount));
    }
}
