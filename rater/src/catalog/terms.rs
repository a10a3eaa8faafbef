//! What applies to a charge beyond its price, as the catalog decides it for a customer's
//! period ([`crate::Catalog::terms`]): the coupons, the tax rate, the currency and FX rate.
//!
//! It owns these terms as values and which billing periods a coupon covers
//! ([`coupon_applies`]); it never prices anything (that is
//! [`crate::rating::charge`], which takes them) and never reads storage.

use rust_decimal::Decimal;
use tally_domain::{Currency, MeterSlug, Period};

use crate::catalog::tax::AppliedRate;
use crate::catalog::zone::ZonedCycle;
use crate::pricing::discount::{Coupon, Duration, PERIODS_MAX};

/// What applies to a charge beyond its price ([`crate::Catalog::terms`]).
#[derive(Debug, Clone, Default)]
pub struct Terms<'a> {
    /// Coupons that apply, in order.
    pub coupons: Vec<&'a Coupon>,
    /// None: no tax.
    pub tax: Option<AppliedRate>,
    /// None: billed in the plan's currency.
    pub fx: Option<Fx>,
}

/// Billing in another currency than the plan's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fx {
    pub to: Currency,
    /// Units of `to` per unit of the plan's currency; none: no rate is effective yet (the
    /// charge is left unpriced).
    pub rate: Option<Decimal>,
}

/// Whether `coupon` discounts charges of `meter` in `period` of `cycle`: its duration counts
/// periods of `cycle` from the one containing its start.
pub fn coupon_applies(
    coupon: &Coupon,
    cycle: &ZonedCycle,
    period: &Period,
    meter: &MeterSlug,
) -> bool {
    if coupon.meter.as_ref().is_some_and(|m| m != meter) {
        return false;
    }
    let first = cycle.period_containing(coupon.starts_ms);
    if period.start_ms < first.start_ms {
        return false;
    }
    let periods = match coupon.duration {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::discount::tests::coupon;
    use crate::pricing::discount::Off;

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
        let pct = Off::Percent(Decimal::TEN);
        let once = coupon(pct, Duration::Once);
        let two = coupon(pct, Duration::Periods(2));
        let forever = coupon(pct, Duration::Forever);
        let applies = |c: &Coupon| [dec, jan, feb, mar].map(|p| coupon_applies(c, &cycle, &p, &m));
        assert_eq!(applies(&once), [false, true, false, false]);
        assert_eq!(applies(&two), [false, true, true, false]);
        assert_eq!(applies(&forever), [false, true, true, true]);
        let mut other_meter = forever.clone();
        other_meter.meter = Some(MeterSlug::new("other").unwrap());
        assert_eq!(applies(&other_meter), [false; 4]);
    }
}
