//! Pricing models: from a quantity to an unrounded amount with its arithmetic, one line per
//! step. One file per model ([`per_unit`], [`graduated`], [`volume`], [`package`], [`flat`],
//! [`dimensional`]) and one per modifier that wraps any model ([`allowance`]: free units
//! first; [`commitment`]: minimum true-up and maximum cap; [`discount`]: a subscription's
//! coupons, last). [`crate::rating::recurring`] names the flat fees and minimums that
//! subscriptions owe in periods without usage.
//!
//! Conventions, documented in docs/PRICING.md:
//! - Tier boundaries: a tier with `up_to = N` covers quantities *up to and including* N.
//! - Every line satisfies `amount = billed_units × unit_price` (`billed_units` defaults to
//!   `quantity`), the lines' quantities sum to the priced quantity and their amounts to the
//!   unrounded amount.
//! - Models never round; [`crate::rating::charge`] rounds once.
//!
//! Pricing is the bottom of the rater's rules: it imports none of the crate's other modules
//! (the catalog and the configuration import it); what it needs from them, such as which
//! billing periods a coupon covers, they decide and pass in.

pub mod allowance;
pub mod commitment;
pub mod dimensional;
pub mod discount;
pub mod flat;
pub mod graduated;
pub mod package;
pub mod per_unit;
pub mod volume;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use dimensional::{Dimensional, Rate};
pub use graduated::Tier;

/// The tax code of a price that names none (`crate::catalog::tax` applies the rates).
pub const DEFAULT_TAX_CODE: &str = "standard";

/// What a price is computed from: a quantity and the group-by values it was measured under.
#[derive(Debug, Clone, Copy)]
pub struct Measured<'a> {
    pub quantity: Decimal,
    /// The time share of the billing period the quantity was measured in (1: the whole
    /// period; less for a part of a period split by a subscription change). Flat fees and
    /// minimums are prorated by it; tiers, free units and maximums are not.
    pub share: Decimal,
    /// Group-by names, sorted, and their values (same length).
    pub group_names: &'a [String],
    pub group_values: &'a [String],
}

impl<'a> Measured<'a> {
    /// A quantity measured without group-by values.
    pub fn ungrouped(quantity: Decimal) -> Measured<'static> {
        Measured {
            quantity,
            share: Decimal::ONE,
            group_names: &[],
            group_values: &[],
        }
    }
}

/// A validated pricing model for one meter (serialized as in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum PriceModel {
    PerUnit {
        unit_price: Decimal,
    },
    Graduated {
        tiers: Vec<Tier>,
    },
    Volume {
        tiers: Vec<Tier>,
    },
    Package {
        #[serde(rename = "package_size")]
        size: Decimal,
        #[serde(rename = "package_price")]
        price: Decimal,
    },
    Flat {
        amount: Decimal,
    },
    Dimensional(Dimensional),
}

/// A validated price: a model plus the modifiers every model accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Price {
    #[serde(flatten)]
    pub model: PriceModel,
    /// Units free in each period before the model applies (zero: none).
    pub free_units: Decimal,
    /// The line never costs less than this (a true-up line makes up the difference).
    pub minimum: Option<Decimal>,
    /// The line never costs more than this (a cap line takes off the excess).
    pub maximum: Option<Decimal>,
    /// Tax code of the price.
    pub tax_code: String,
    /// When a `flat` fee is billed: with its period (`in_arrears`, the default, not shown)
    /// or at the start of its period (`in_advance`, [`crate::rating::recurring`]).
    #[serde(skip_serializing_if = "Billing::is_in_arrears")]
    pub billing: Billing,
}

/// When a price is billed (`billing` of a price; only a `flat` fee may be billed in advance).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    /// With its period: on the invoice of the period, finalized after the period ends.
    #[default]
    InArrears,
    /// At the start of its period (or of the part of it a subscription covers): on the
    /// invoice finalized then, see [`crate::rating::recurring::advance_invoice_period`].
    InAdvance,
}

impl Billing {
    pub fn is_in_arrears(&self) -> bool {
        *self == Billing::InArrears
    }
}

/// What a line of the arithmetic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Units given free by the allowance (unit price zero).
    FreeAllowance,
    /// The true-up to the minimum (quantity zero, one billed unit).
    Minimum,
    /// The cap to the maximum (quantity zero, one billed unit, negative price).
    Maximum,
    /// A coupon (quantity zero, one billed unit, negative price; `label` names the coupon).
    Discount,
}

/// One line of a price's arithmetic: a tier's share of a quantity, a package count, a fee,
/// a free allowance or a commitment adjustment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierUse {
    /// 1-based tier number (1 for single-rate models and adjustments).
    pub tier: usize,
    /// The tier covers quantities above `from` ...
    pub from: Decimal,
    /// ... up to and including `up_to` (`None`: unbounded).
    pub up_to: Option<Decimal>,
    /// The part of the measured quantity this line covers.
    pub quantity: Decimal,
    pub unit_price: Decimal,
    /// `billed_units × unit_price` (or `quantity × unit_price` without billed units), unrounded.
    pub amount: Decimal,
    /// Units billed when they differ from `quantity`: packages, one flat fee, one adjustment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billed_units: Option<Decimal>,
    /// Absent for the model's own lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<LineKind>,
    /// The coupon of a discount line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl TierUse {
    /// A single-rate line: `quantity × unit_price`.
    pub fn single(quantity: Decimal, unit_price: Decimal, amount: Decimal) -> TierUse {
        TierUse {
            tier: 1,
            from: Decimal::ZERO,
            up_to: None,
            quantity,
            unit_price,
            amount,
            billed_units: None,
            kind: None,
            label: None,
        }
    }

    /// `billed_units` (or `quantity`) × `unit_price`: what `amount` must equal.
    pub fn expected_amount(&self) -> Option<Decimal> {
        self.billed_units
            .unwrap_or(self.quantity)
            .checked_mul(self.unit_price)
    }
}

/// An unrounded price and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub amount: Decimal,
    pub tiers: Vec<TierUse>,
}

impl Priced {
    fn from_lines(tiers: Vec<TierUse>) -> Option<Priced> {
        let mut amount = Decimal::ZERO;
        for t in &tiers {
            amount = amount.checked_add(t.amount)?;
        }
        Some(Priced { amount, tiers })
    }
}

/// Why a quantity could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("amount overflows for quantity {quantity}")]
    Overflow { quantity: Decimal },
    /// A dimensional price has no rate for these group-by values.
    #[error("no rate for group {group}")]
    NoRate { group: String },
}

impl PriceModel {
    /// The model's stable name, stored with charges.
    pub fn name(&self) -> &'static str {
        match self {
            PriceModel::PerUnit { .. } => "per_unit",
            PriceModel::Graduated { .. } => "graduated",
            PriceModel::Volume { .. } => "volume",
            PriceModel::Package { .. } => "package",
            PriceModel::Flat { .. } => "flat",
            PriceModel::Dimensional(_) => "dimensional",
        }
    }

    /// Whether charges are computed per group-by value (else per meter).
    pub fn per_group(&self) -> bool {
        matches!(self, PriceModel::Dimensional(_))
    }

    /// Prices `quantity` (non-negative) with the model alone; `Ok(None)` only for a
    /// dimensional price without a rate for the group.
    fn lines(&self, m: Measured<'_>) -> Result<Option<Vec<TierUse>>, PriceError> {
        let q = m.quantity;
        let lines = match self {
            PriceModel::PerUnit { unit_price } => per_unit::price(*unit_price, q),
            PriceModel::Graduated { tiers } => graduated::price(tiers, q),
            PriceModel::Volume { tiers } => volume::price(tiers, q),
            PriceModel::Package { size, price } => package::price(*size, *price, q),
            PriceModel::Flat { amount } => flat::price(*amount, q, m.share).map(|l| vec![l]),
            PriceModel::Dimensional(d) => match d.rate(m.group_names, m.group_values) {
                Some(unit_price) => per_unit::price(unit_price, q),
                None => {
                    return Err(PriceError::NoRate {
                        group: dimensional::describe(m.group_names, m.group_values),
                    })
                }
            },
        };
        lines.map(Some).ok_or(PriceError::Overflow { quantity: q })
    }

    /// The unit price to show for the whole line, when there is a single one.
    pub fn unit_price(&self, m: Measured<'_>) -> Option<Decimal> {
        match self {
            PriceModel::PerUnit { unit_price } => Some(*unit_price),
            PriceModel::Dimensional(d) => d.rate(m.group_names, m.group_values),
            _ => None,
        }
    }
}

impl Price {
    /// A price with no allowance and no commitment.
    pub fn plain(model: PriceModel) -> Price {
        Price {
            model,
            free_units: Decimal::ZERO,
            minimum: None,
            maximum: None,
            tax_code: DEFAULT_TAX_CODE.to_owned(),
            billing: Billing::InArrears,
        }
    }

    /// Whether the price is a fee billed in advance (a non-zero `flat` fee with `billing =
    /// "in_advance"`).
    pub fn in_advance(&self) -> bool {
        self.billing == Billing::InAdvance
            && matches!(self.model, PriceModel::Flat { amount } if !amount.is_zero())
    }

    /// Prices a measured quantity: the free allowance first, then the model on the rest,
    /// then the minimum and maximum on the model's subtotal.
    pub fn price(&self, m: Measured<'_>) -> Result<Priced, PriceError> {
        self.price_discounted(m, &[])
    }

    /// [`Price::price`], then `coupons` (already known to apply) on the result.
    pub fn price_discounted(
        &self,
        m: Measured<'_>,
        coupons: &[&discount::Coupon],
    ) -> Result<Priced, PriceError> {
        debug_assert!(!m.quantity.is_sign_negative() || m.quantity.is_zero());
        let overflow = PriceError::Overflow {
            quantity: m.quantity,
        };
        let (free, billable) = allowance::split(self.free_units, m.quantity);
        let mut lines: Vec<TierUse> = free.into_iter().collect();
        let billable_m = Measured {
            quantity: billable,
            ..m
        };
        lines.extend(self.model.lines(billable_m)?.unwrap_or_default());
        let subtotal = Priced::from_lines(lines.clone())
            .ok_or(overflow.clone())?
            .amount;
        let minimum = match self.minimum {
            Some(min) => Some(commitment::prorated(min, m.share).ok_or(overflow.clone())?),
            None => None,
        };
        let mut adjustment = commitment::adjust(subtotal, minimum, self.maximum);
        if let (Some(line), Some(min)) = (adjustment.as_mut(), self.minimum) {
            if line.kind == Some(LineKind::Minimum) && m.share != Decimal::ONE {
                line.label = Some(format!("minimum {min} prorated x {}", m.share));
            }
        }
        lines.extend(adjustment);
        let before_discounts = Priced::from_lines(lines.clone())
            .ok_or(overflow.clone())?
            .amount;
        lines.extend(discount::lines(before_discounts, coupons));
        let priced = Priced::from_lines(lines).ok_or(overflow)?;
        debug_assert_eq!(
            priced.tiers.iter().map(|t| t.quantity).sum::<Decimal>(),
            m.quantity
        );
        debug_assert!(priced
            .tiers
            .iter()
            .all(|t| t.expected_amount() == Some(t.amount)));
        Ok(priced)
    }
}
