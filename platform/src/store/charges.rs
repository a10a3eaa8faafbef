//! The row of the `charges` table, declared once: the rater writes it, the invoicer reads it
//! (`SELECT ?fields FROM …` names exactly these columns), so the two can never disagree on a
//! column's name, order or encoding. Owns the columns and their encodings only; it never
//! decides what a charge is worth or which charges an invoice bills.
//!
//! The customer and currencies are read as stored, not validated here: a pass reads every
//! customer's charges with one cursor, and one row's bad value must never fail the read for
//! the others. The reader turns a row into its typed charge one row at a time
//! (`tally_invoice::invoice::ChargeLine`'s `TryFrom`), leaving out a row that does not
//! validate, with its reason.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::dec9;

/// One version of one charge (`migrations/0002_billing.sql`, 0006, 0007); `v_charges` shows
/// the latest version of each `charge_id`. Timestamps are `DateTime` seconds.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct ChargeRow {
    pub charge_id: String,
    /// A [`tally_domain::CustomerId`] as written.
    pub customer: String,
    pub period_start: u32,
    pub period_end: u32,
    pub meter: String,
    /// Canonical JSON of the group-by values (`{}`: the whole meter).
    pub group_key: String,
    pub group_names: Vec<String>,
    pub group_values: Vec<String>,
    pub plan_id: String,
    pub plan_version: u32,
    pub price_model: String,
    /// The billing currency of the amounts (a [`tally_domain::Currency`] code as written).
    pub currency: String,
    #[serde(with = "dec9")]
    pub quantity: Decimal,
    /// A decimal as text; empty when the model has no single unit price.
    pub unit_price: String,
    /// The tiers used, as JSON.
    pub tiers: String,
    /// After discounts, before tax.
    pub amount_minor: i64,
    pub amount_before_discounts_minor: i64,
    pub tax_region: String,
    pub tax_code: String,
    /// Percent as text; empty without tax.
    pub tax_rate: String,
    pub tax_minor: i64,
    pub amount_with_tax_minor: i64,
    /// The currency of the plan's prices (= `currency` unless converted).
    pub price_currency: String,
    /// The FX rate as text; empty when not converted.
    pub fx_rate: String,
    pub windows: u32,
    pub usage_from: u32,
    pub usage_to: u32,
    pub computed_at: u32,
    pub version: u64,
}
