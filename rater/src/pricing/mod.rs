//! Pricing models: from a quantity to an unrounded amount with its tier arithmetic. One file
//! per model. Tier boundaries follow one convention: a tier with `up_to = N` covers
//! quantities *up to and including* N. Models never round; [`crate::charge`] rounds once.

pub mod graduated;
pub mod per_unit;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use graduated::Tier;

/// A validated price for one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceModel {
    PerUnit { unit_price: Decimal },
    Graduated { tiers: Vec<Tier> },
}

/// One tier's share of a quantity (for per-unit prices, the single line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierUse {
    /// 1-based tier number.
    pub tier: usize,
    /// The tier covers quantities above `from` ...
    pub from: Decimal,
    /// ... up to and including `up_to` (`None`: unbounded).
    pub up_to: Option<Decimal>,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    /// `quantity * unit_price`, unrounded.
    pub amount: Decimal,
}

/// An unrounded price and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub amount: Decimal,
    pub tiers: Vec<TierUse>,
}

/// A price that overflowed the decimal range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("amount overflows for quantity {quantity}")]
pub struct PriceOverflow {
    pub quantity: Decimal,
}

impl PriceModel {
    /// The model's stable name, stored with charges.
    pub fn name(&self) -> &'static str {
        match self {
            PriceModel::PerUnit { .. } => "per_unit",
            PriceModel::Graduated { .. } => "graduated",
        }
    }

    /// Prices `quantity` (non-negative).
    pub fn price(&self, quantity: Decimal) -> Result<Priced, PriceOverflow> {
        debug_assert!(!quantity.is_sign_negative() || quantity.is_zero());
        let priced = match self {
            PriceModel::PerUnit { unit_price } => per_unit::price(*unit_price, quantity),
            PriceModel::Graduated { tiers } => graduated::price(tiers, quantity),
        }
        .ok_or(PriceOverflow { quantity })?;
        debug_assert_eq!(
            priced.tiers.iter().map(|t| t.amount).sum::<Decimal>(),
            priced.amount
        );
        debug_assert_eq!(
            priced.tiers.iter().map(|t| t.quantity).sum::<Decimal>(),
            quantity
        );
        Ok(priced)
    }

    /// The unit price to show for the whole line, when there is a single one.
    pub fn unit_price(&self) -> Option<Decimal> {
        match self {
            PriceModel::PerUnit { unit_price } => Some(*unit_price),
            PriceModel::Graduated { .. } => None,
        }
    }
}
