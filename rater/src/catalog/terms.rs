//! What applies to a charge beyond its price, as the catalog decides it for a customer's
//! period ([`crate::Catalog::terms`]): the coupons, the tax rate, the currency and FX rate.
//!
//! It owns these terms as values; it never prices anything (that is
//! [`crate::rating::charge`], which takes them) and never reads storage.

use rust_decimal::Decimal;
use tally_domain::Currency;

use crate::catalog::tax::AppliedRate;
use crate::pricing::discount::Coupon;

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
