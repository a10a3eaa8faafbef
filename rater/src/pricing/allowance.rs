//! Free allowance: the first `free_units` of each period cost nothing; the model prices
//! only the rest. Tier bounds of the model apply to the billable rest (documented in
//! docs/PRICING.md), so a plan with 1000 free units and a first tier up to 100 prices units
//! 1001 to 1100 at the first tier's price.

use rust_decimal::Decimal;

use super::{LineKind, TierUse};

/// Splits `quantity` into the free line (absent without an allowance or usage) and the
/// billable rest.
pub fn split(free_units: Decimal, quantity: Decimal) -> (Option<TierUse>, Decimal) {
    let free = free_units.min(quantity).max(Decimal::ZERO);
    if free.is_zero() {
        return (None, quantity);
    }
    let line = TierUse {
        tier: 1,
        from: Decimal::ZERO,
        up_to: Some(free_units),
        quantity: free,
        unit_price: Decimal::ZERO,
        amount: Decimal::ZERO,
        billed_units: None,
        kind: Some(LineKind::FreeAllowance),
        label: None,
    };
    (Some(line), quantity - free)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn the_allowance_covers_usage_up_to_and_including_it() {
        for (free, qty, covered, rest) in [
            ("1000", "0", None, "0"),
            ("1000", "999", Some("999"), "0"),
            ("1000", "1000", Some("1000"), "0"),
            ("1000", "1000.5", Some("1000"), "0.5"),
            ("0", "7", None, "7"),
        ] {
            let (line, billable) = split(d(free), d(qty));
            assert_eq!(line.map(|l| l.quantity), covered.map(d), "{free} of {qty}");
            assert_eq!(billable, d(rest), "{free} of {qty}");
        }
    }
}
