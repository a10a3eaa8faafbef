//! Discounts: coupons on a subscription, percentage or fixed, for a duration of billing
//! periods (once, N periods, forever). A coupon applies to a charge after the price and its
//! commitments, before rounding; each coupon is one line (quantity zero, one billed unit,
//! negative price), applied in declaration order to what the previous ones left, and never
//! takes a charge below zero. A fixed amount is per period and names the meter it applies to
//! (one charge per meter, or each group of a price book).
//!
//! Which billing periods a coupon covers is the catalog's question
//! ([`crate::catalog::terms::coupon_applies`]): here are the coupon and its lines.

use rust_decimal::Decimal;
use tally_domain::MeterSlug;

use super::{LineKind, TierUse};

/// How much a coupon takes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Off {
    /// Percent of the charge, above 0 and at most 100.
    Percent(Decimal),
    /// A fixed amount in the plan's currency, at most the charge.
    Amount(Decimal),
}

/// How many billing periods a coupon lasts, from the period containing its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duration {
    Once,
    Periods(u32),
    Forever,
}

/// A validated coupon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coupon {
    pub id: String,
    pub off: Off,
    /// Only charges of this meter; none: every charge.
    pub meter: Option<MeterSlug>,
    pub starts_ms: i64,
    pub duration: Duration,
}

/// Longest coupon, in periods (a limit on the walk over periods).
pub const PERIODS_MAX: u32 = 1200;

/// The discount lines for a charge whose undiscounted (unrounded) amount is `subtotal`.
pub fn lines(subtotal: Decimal, coupons: &[&Coupon]) -> Vec<TierUse> {
    let mut left = subtotal.max(Decimal::ZERO);
    let mut out = Vec::new();
    for c in coupons {
        let off = match c.off {
            Off::Percent(p) => left * p / Decimal::ONE_HUNDRED,
            Off::Amount(a) => a.min(left),
        };
        if off.is_zero() {
            continue;
        }
        left -= off;
        out.push(TierUse {
            tier: 1,
            from: Decimal::ZERO,
            up_to: None,
            quantity: Decimal::ZERO,
            unit_price: -off,
            amount: -off,
            billed_units: Some(Decimal::ONE),
            kind: Some(LineKind::Discount),
            label: Some(c.id.clone()),
        });
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// A coupon on every meter starting in January 2026 (also used by `catalog::terms`).
    pub(crate) fn coupon(off: Off, duration: Duration) -> Coupon {
        Coupon {
            id: "c".into(),
            off,
            meter: None,
            starts_ms: 1_768_000_000_000, // 2026-01-09: the January period
            duration,
        }
    }

    #[test]
    fn percent_and_fixed_coupons_stack_in_order_and_never_go_below_zero() {
        let ten_pct = coupon(Off::Percent(d("10")), Duration::Forever);
        let five_off = coupon(Off::Amount(d("5")), Duration::Forever);
        for (subtotal, coupons, discounted) in [
            ("100", vec![&ten_pct], "90"),
            ("100", vec![&ten_pct, &five_off], "85"), // 100 - 10, then - 5
            ("100", vec![&five_off, &ten_pct], "85.5"), // 100 - 5, then - 9.5
            ("3", vec![&five_off], "0"),              // at most the charge
            ("0", vec![&ten_pct, &five_off], "0"),    // nothing to discount: no line
            ("0.015", vec![&ten_pct], "0.0135"),      // unrounded; the charge rounds once
        ] {
            let l = lines(d(subtotal), &coupons);
            let total = d(subtotal) + l.iter().map(|t| t.amount).sum::<Decimal>();
            assert_eq!(total, d(discounted), "{subtotal}");
            assert!(l.iter().all(|t| t.expected_amount() == Some(t.amount)));
        }
    }
}
