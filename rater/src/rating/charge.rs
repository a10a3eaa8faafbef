//! A charge: the price of one customer's usage of one meter over one billing period, with
//! everything needed to explain and recompute it (plan version, price model, tier
//! arithmetic, quantity, the windows it came from). Pure: no I/O, no clock.

use rust_decimal::Decimal;
use serde::Serialize;
use tally_domain::{Aggregation, Currency, CustomerId, MeterSlug, Period};
use xxhash_rust::xxh3::xxh3_128;

use crate::catalog::plan::Plan;
use crate::catalog::tax::tax_on;
use crate::catalog::terms::{Fx, Terms};
use crate::pricing::{LineKind, Measured, PriceError, Priced, TierUse};

/// One customer's committed usage of one meter in one period: of the whole meter
/// (`group_key` `{}`), or of one group-by value when the meter's price is per group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterUsage {
    pub customer: CustomerId,
    pub period: Period,
    pub meter: MeterSlug,
    pub aggregation: Aggregation,
    /// Canonical JSON of the group-by values (`{}`: all groups together).
    pub group_key: String,
    /// Group-by names (sorted) and values; empty for `{}`.
    pub group_names: Vec<String>,
    pub group_values: Vec<String>,
    /// Where the charge's part of the period starts: the period start, or the instant a
    /// subscription change inside the period took effect.
    pub segment_from_ms: i64,
    /// Where the part ends: the period end, or the instant the next subscription takes effect.
    pub segment_to_ms: i64,
    pub quantity: Decimal,
    /// Windows (per agent and group) that contributed.
    pub windows: u32,
    pub first_window_ms: i64,
    pub last_window_end_ms: i64,
}

impl MeterUsage {
    /// The part's time share of its period, `(segment_to - segment_from) / (period end -
    /// period start)`: exactly 1 for a whole period; flat fees and minimums are prorated by it.
    pub fn share(&self) -> Decimal {
        let period_ms = self.period.end_ms - self.period.start_ms;
        let part_ms = self.segment_to_ms.min(self.period.end_ms)
            - self.segment_from_ms.max(self.period.start_ms);
        if part_ms >= period_ms || period_ms <= 0 {
            return Decimal::ONE;
        }
        Decimal::from(part_ms.max(0))
            .checked_div(Decimal::from(period_ms))
            .unwrap_or(Decimal::ONE)
    }

    /// Merges one window's quantity according to the meter's aggregation.
    pub fn add_window(&mut self, quantity: Decimal, start_ms: i64, end_ms: i64) {
        self.quantity = match self.aggregation {
            // UNIQUE_COUNT rows each stand for one distinct value of the period (see usage.rs)
            Aggregation::Sum | Aggregation::Count | Aggregation::UniqueCount => {
                self.quantity + quantity
            }
            Aggregation::Min | Aggregation::Max | Aggregation::Latest if self.windows == 0 => {
                quantity
            }
            Aggregation::Min => self.quantity.min(quantity),
            Aggregation::Max => self.quantity.max(quantity),
            // the latest window wins; windows ending together (other agents or groups) keep
            // the greater value, so the result does not depend on row order
            Aggregation::Latest if end_ms > self.last_window_end_ms => quantity,
            Aggregation::Latest if end_ms == self.last_window_end_ms => self.quantity.max(quantity),
            Aggregation::Latest => self.quantity,
        };
        self.first_window_ms = if self.windows == 0 {
            start_ms
        } else {
            self.first_window_ms.min(start_ms)
        };
        self.last_window_end_ms = self.last_window_end_ms.max(end_ms);
        self.windows += 1;
    }
}

/// A priced charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    pub charge_id: String,
    pub customer: String,
    pub period: Period,
    pub meter: String,
    /// Canonical group-by values the charge covers (`{}`: the whole meter).
    pub group_key: String,
    pub group_names: Vec<String>,
    pub group_values: Vec<String>,
    pub plan_id: String,
    pub plan_version: u32,
    pub price_model: &'static str,
    /// The billing currency of `amount` (the plan's, unless converted).
    pub currency: &'static str,
    /// The currency of the unit prices and lines (the plan's).
    pub price_currency: &'static str,
    /// The FX rate the lines were converted with; none when not converted.
    pub fx_rate: Option<Decimal>,
    pub quantity: Decimal,
    pub unit_price: Option<Decimal>,
    pub tiers: Vec<TierUse>,
    /// Rounded once, to the currency's minor units, half away from zero; after discounts.
    pub amount: Decimal,
    pub amount_minor: i64,
    /// The amount without the discount lines, rounded the same way; the discount is
    /// `amount_minor - amount_before_discounts_minor`.
    pub amount_before_discounts_minor: i64,
    /// Tax region and code (`<code>:exempt` for an exempt customer); empty without tax.
    pub tax_region: String,
    pub tax_code: String,
    /// Percent; none without tax.
    pub tax_rate: Option<Decimal>,
    /// Tax on `amount`, rounded by the same rule.
    pub tax_minor: i64,
    /// `amount_minor + tax_minor`.
    pub amount_with_tax_minor: i64,
    pub windows: u32,
    pub usage_from_ms: i64,
    pub usage_to_ms: i64,
}

/// A charge that cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChargeError {
    #[error("charge for {customer}/{meter}: {detail}")]
    Overflow {
        customer: String,
        meter: String,
        detail: String,
    },
}

/// The deterministic id of a charge: the same inputs always name the same charge.
pub fn charge_id(
    customer: &str,
    period_start_ms: i64,
    meter: &str,
    group_key: &str,
    plan_id: &str,
    plan_version: u32,
) -> String {
    let text =
        format!("{customer}\0{period_start_ms}\0{meter}\0{group_key}\0{plan_id}\0{plan_version}");
    format!("chg_{:032x}", xxh3_128(text.as_bytes()))
}

/// The group key, plus the segment start for a period split by a subscription change (so a
/// charge of an unsplit period keeps the id it always had).
fn segment_key(usage: &MeterUsage) -> String {
    if usage.segment_from_ms == usage.period.start_ms {
        usage.group_key.clone()
    } else {
        format!("{}@{}", usage.group_key, usage.segment_from_ms)
    }
}

/// Prices `usage` with `plan`; `None` when the plan has no price for the meter (or, for a
/// price book, no rate for the group).
pub fn compute(usage: &MeterUsage, plan: &Plan) -> Result<Option<Charge>, ChargeError> {
    compute_with(usage, plan, &Terms::default())
}

/// [`compute`] with the subscription's coupons and tax for this charge.
pub fn compute_with(
    usage: &MeterUsage,
    plan: &Plan,
    terms: &Terms<'_>,
) -> Result<Option<Charge>, ChargeError> {
    let Some(price) = plan.prices.get(&usage.meter) else {
        return Ok(None);
    };
    let measured = Measured {
        quantity: usage.quantity,
        share: usage.share(),
        group_names: &usage.group_names,
        group_values: &usage.group_values,
    };
    let priced = match price.price_discounted(measured, &terms.coupons) {
        Ok(p) => p,
        Err(PriceError::NoRate { .. }) => return Ok(None),
        Err(e) => return Err(overflow(usage, e.to_string())),
    };
    let (currency, rate) = match terms.fx {
        None => (plan.currency, Decimal::ONE),
        Some(Fx { rate: None, .. }) => return Ok(None),
        Some(Fx { to, rate: Some(r) }) => (to, r),
    };
    let sums = Amounts::of(usage, &priced, currency, rate, terms)?;
    Ok(Some(Charge {
        charge_id: charge_id(
            usage.customer.as_str(),
            usage.period.start_ms,
            usage.meter.as_str(),
            &segment_key(usage),
            &plan.id,
            plan.version,
        ),
        customer: usage.customer.to_string(),
        period: usage.period,
        meter: usage.meter.to_string(),
        group_key: usage.group_key.clone(),
        group_names: usage.group_names.clone(),
        group_values: usage.group_values.clone(),
        plan_id: plan.id.clone(),
        plan_version: plan.version,
        price_model: price.model.name(),
        currency: currency.code(),
        price_currency: plan.currency.code(),
        fx_rate: terms.fx.and(Some(rate)),
        quantity: usage.quantity,
        unit_price: price.model.unit_price(measured),
        tiers: priced.tiers,
        amount: sums.amount,
        amount_minor: sums.amount_minor,
        amount_before_discounts_minor: sums.amount_before_discounts_minor,
        tax_region: terms
            .tax
            .as_ref()
            .map(|r| r.region.clone())
            .unwrap_or_default(),
        tax_code: terms
            .tax
            .as_ref()
            .map(|r| r.code.clone())
            .unwrap_or_default(),
        tax_rate: terms.tax.as_ref().map(|r| r.rate_percent),
        tax_minor: sums.tax_minor,
        amount_with_tax_minor: sums.amount_minor.saturating_add(sums.tax_minor),
        windows: usage.windows,
        usage_from_ms: usage.first_window_ms,
        usage_to_ms: usage.last_window_end_ms,
    }))
}

/// The error of a charge of `usage` whose arithmetic overflowed.
fn overflow(usage: &MeterUsage, detail: String) -> ChargeError {
    ChargeError::Overflow {
        customer: usage.customer.to_string(),
        meter: usage.meter.to_string(),
        detail,
    }
}

/// A priced charge's sums in its billing currency, each rounded once to minor units.
struct Amounts {
    amount: Decimal,
    amount_minor: i64,
    amount_before_discounts_minor: i64,
    tax_minor: i64,
}

impl Amounts {
    /// Converts `priced` at `rate` into `currency` and adds the tax of `terms`.
    fn of(
        usage: &MeterUsage,
        priced: &Priced,
        currency: Currency,
        rate: Decimal,
        terms: &Terms<'_>,
    ) -> Result<Amounts, ChargeError> {
        let convert = |d: Decimal| {
            d.checked_mul(rate)
                .ok_or_else(|| overflow(usage, format!("converting {d} at {rate}")))
        };
        // The one rounding point: the charge's full-precision amount, to minor units.
        let amount = currency.round(convert(priced.amount)?);
        let amount_minor = currency
            .to_minor(amount)
            .map_err(|e| overflow(usage, e.to_string()))?;
        let before_discounts: Decimal = priced
            .tiers
            .iter()
            .filter(|t| t.kind != Some(LineKind::Discount))
            .map(|t| t.amount)
            .sum();
        let amount_before_discounts_minor = currency
            .to_minor(currency.round(convert(before_discounts)?))
            .map_err(|e| overflow(usage, e.to_string()))?;
        let tax = terms
            .tax
            .as_ref()
            .map(|r| currency.round(tax_on(amount, r.rate_percent)))
            .unwrap_or_default();
        let tax_minor = currency
            .to_minor(tax)
            .map_err(|e| overflow(usage, e.to_string()))?;
        Ok(Amounts {
            amount,
            amount_minor,
            amount_before_discounts_minor,
            tax_minor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::{Price, PriceModel, Tier};
    use std::collections::HashMap;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn plan(currency: &str, model: PriceModel) -> Plan {
        let mut prices = HashMap::new();
        prices.insert(MeterSlug::new("m").unwrap(), Price::plain(model));
        Plan {
            entitlements: Default::default(),
            id: "p".into(),
            version: 3,
            currency: currency.parse().unwrap(),
            effective_from_ms: 0,
            prices,
        }
    }

    fn usage(q: &str) -> MeterUsage {
        MeterUsage {
            customer: CustomerId::new("acme").unwrap(),
            period: Period {
                start_ms: 0,
                end_ms: 1000,
            },
            meter: MeterSlug::new("m").unwrap(),
            aggregation: Aggregation::Sum,
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            segment_from_ms: 0,
            segment_to_ms: 1000,
            quantity: d(q),
            windows: 1,
            first_window_ms: 0,
            last_window_end_ms: 60_000,
        }
    }

    #[test]
    fn rounds_once_per_currency() {
        let per_unit = |p: &str| PriceModel::PerUnit { unit_price: d(p) };
        let c = compute(&usage("1234567"), &plan("USD", per_unit("0.000002")))
            .unwrap()
            .unwrap();
        assert_eq!((c.amount, c.amount_minor), (d("2.47"), 247)); // 2.469134 -> 2.47
        let c = compute(&usage("3"), &plan("JPY", per_unit("0.5")))
            .unwrap()
            .unwrap();
        assert_eq!((c.amount, c.amount_minor), (d("2"), 2)); // 1.5 -> 2, half away from zero
        let c = compute(&usage("1"), &plan("BHD", per_unit("0.0125")))
            .unwrap()
            .unwrap();
        assert_eq!((c.amount, c.amount_minor), (d("0.013"), 13));
    }

    #[test]
    fn graduated_charges_keep_their_tiers() {
        let tiers = vec![
            Tier {
                up_to: Some(d("10")),
                unit_price: d("1"),
            },
            Tier {
                up_to: None,
                unit_price: d("0.5"),
            },
        ];
        let c = compute(&usage("15"), &plan("USD", PriceModel::Graduated { tiers }))
            .unwrap()
            .unwrap();
        assert_eq!(c.amount, d("12.5"));
        assert_eq!(c.tiers.len(), 2);
        assert_eq!(c.price_model, "graduated");
        assert_eq!(c.plan_version, 3);
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(
            charge_id("a", 0, "m", "{}", "p", 1),
            charge_id("a", 0, "m", "{}", "p", 1)
        );
        assert_ne!(
            charge_id("a", 0, "m", "{}", "p", 1),
            charge_id("a", 0, "m", "{}", "p", 2)
        );
        assert_ne!(
            charge_id("a", 0, "m", "{}", "p", 1),
            charge_id("b", 0, "m", "{}", "p", 1)
        );
    }

    #[test]
    fn latest_meters_take_the_latest_window() {
        let mut u = usage("0");
        u.aggregation = Aggregation::Latest;
        u.windows = 0;
        u.add_window(d("3"), 60_000, 120_000);
        u.add_window(d("9"), 0, 60_000);
        u.add_window(d("5"), 60_000, 120_000);
        assert_eq!(u.quantity, d("5"));
    }

    #[test]
    fn min_and_max_meters_merge_windows() {
        let mut u = usage("0");
        u.aggregation = Aggregation::Max;
        u.windows = 0;
        u.add_window(d("3"), 0, 60_000);
        u.add_window(d("7"), 60_000, 120_000);
        u.add_window(d("5"), 120_000, 180_000);
        assert_eq!(u.quantity, d("7"));
        assert_eq!(
            (u.windows, u.first_window_ms, u.last_window_end_ms),
            (3, 0, 180_000)
        );
    }
}
