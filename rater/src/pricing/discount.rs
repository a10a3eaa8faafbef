//! Discounts: coupons on a subscription, percentage or fixed, for a duration of billing
//! periods (once, N periods, forever). A coupon applies to a charge after the price and its
//! commitments, before rounding; each coupon is one line (quantity zero, one billed unit,
//! negative price), applied in declaration order to what the previous ones left, and never
//! takes a charge below zero. A fixed amount is per period and names the meter it applies to
//! (one charge per meter, or each group of a price book).

use rust_decimal::Decimal;
use tally_domain::{MeterSlug, Period};

use super::{LineKind, TierUse};
use crate::catalog::zone::ZonedCycle;

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

impl Coupon {
    /// Whether the coupon discounts charges of `meter` in `period` of `cycle`.
    pub fn applies(&self, cycle: &ZonedCycle, period: &Period, meter: &MeterSlug) -> bool {
        if self.meter.as_ref().is_some_and(|m| m != meter) {
            return false;
        }
        let first = cycle.period_containing(self.starts_ms);
        if period.start_ms < first.start_ms {
            return false;
        }
        let periods = match self.duration {
            Duration::Forever => return true,
            Duration::Once => 1,
            Duration::Periods(n) => n.min(PERIODS_MAX),
        };
        let mut p = first;
        for _ in 0..periods {
            if p.start_ms == period.start_ms {
                return true;
            }
            p = cycle.next(&p);
        }
        false
    }
}

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
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn coupon(off: Off, duration: Duration) -> Coupon {
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

    #[test]
    fn durations_count_billing_periods_from_the_one_containing_the_start() {
        let cycle: ZonedCycle = tally_domain::BillingCycle::default().into();
        let jan = cycle.period_containing(1_768_000_000_000);
        let feb = cycle.next(&jan);
        let mar = cycle.next(&feb);
        let dec = Period {
            start_ms: jan.start_ms - 31 * 86_400_000,
            end_ms: jan.start_ms,
        };
        let m = MeterSlug::new("m").unwrap();
        let pct = Off::Percent(d("10"));
        let once = coupon(pct, Duration::Once);
        let two = coupon(pct, Duration::Periods(2));
        let forever = coupon(pct, Duration::Forever);
        let applies = |c: &Coupon| [dec, jan, feb, mar].map(|p| c.applies(&cycle, &p, &m));
        assert_eq!(applies(&once), [false, true, false, false]);
        assert_eq!(applies(&two), [false, true, true, false]);
        assert_eq!(applies(&forever), [false, true, true, true]);
        let mut other_meter = forever.clone();
        other_meter.meter = Some(MeterSlug::new("other").unwrap());
        assert_eq!(applies(&other_meter), [false; 4]);
    }
}
