//! Commitments on one price: a minimum (the line is trued up to it) and a maximum (the line
//! is capped at it). Both compare the unrounded subtotal of the model's lines; the
//! adjustment is its own line (quantity zero, one billed unit), so the arithmetic still
//! sums to the amount.
//!
//! In a part of a period split by a subscription change, the minimum is prorated by the
//! part's time share ([`prorated`]); the maximum is not (each part is capped at it).

use rust_decimal::Decimal;

use super::{LineKind, TierUse};

/// The minimum owed by a part covering `share` of its period (1: the whole minimum),
/// unrounded; `None` on overflow.
pub fn prorated(minimum: Decimal, share: Decimal) -> Option<Decimal> {
    if share == Decimal::ONE {
        return Some(minimum);
    }
    minimum.checked_mul(share)
}

/// The adjustment line for `subtotal`, if the commitment applies.
pub fn adjust(
    subtotal: Decimal,
    minimum: Option<Decimal>,
    maximum: Option<Decimal>,
) -> Option<TierUse> {
    let (kind, target) = match (minimum, maximum) {
        (Some(min), _) if subtotal < min => (LineKind::Minimum, min),
        (_, Some(max)) if subtotal > max => (LineKind::Maximum, max),
        _ => return None,
    };
    let delta = target - subtotal;
    Some(TierUse {
        tier: 1,
        from: Decimal::ZERO,
        up_to: None,
        quantity: Decimal::ZERO,
        unit_price: delta,
        amount: delta,
        billed_units: Some(Decimal::ONE),
        kind: Some(kind),
        label: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_minimum_trues_up_and_a_maximum_caps() {
        let (min, max) = (Some(d("10")), Some(d("100")));
        for (subtotal, kind, delta) in [
            ("0", Some(LineKind::Minimum), "10"), // zero usage still owes the minimum
            ("9.995", Some(LineKind::Minimum), "0.005"),
            ("10", None, "0"), // exactly the minimum: no line
            ("55.5", None, "0"),
            ("100", None, "0"), // exactly the cap: no line
            ("100.001", Some(LineKind::Maximum), "-0.001"),
            ("1000000", Some(LineKind::Maximum), "-999900"),
        ] {
            let line = adjust(d(subtotal), min, max);
            assert_eq!(line.as_ref().and_then(|l| l.kind), kind, "{subtotal}");
            let got = line.map_or(Decimal::ZERO, |l| l.amount);
            assert_eq!(got, d(delta), "{subtotal}");
            assert!(d(subtotal) + got >= d("10") && d(subtotal) + got <= d("100"));
        }
    }

    #[test]
    fn without_commitments_nothing_changes() {
        assert_eq!(adjust(d("5"), None, None), None);
    }
}
