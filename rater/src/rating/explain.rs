//! Explaining one charge: the usage windows it came from, the arithmetic of each line (tiers,
//! packages, allowance, commitments, coupons), the single rounding, and the tax, summing
//! exactly to the stored amounts. Reading is in [`load`]; [`explain`] is pure, so the same
//! check serves the CLI (`tally-rater explain <charge_id>`) and tests.

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{Aggregation, Currency, Meter};
use tally_platform::store::charges::ChargeRow;
use tally_platform::usage;

use crate::pricing::{LineKind, TierUse};

/// A charge as `v_charges` stores it: the one `charges` row the rater writes and the invoicer
/// reads ([`tally_platform::store::charges::ChargeRow`]); `crate::store::charges::row` makes
/// it from a computed [`crate::rating::charge::Charge`].
pub type StoredCharge = ChargeRow;

/// One committed usage window of the charge (per agent and group). In the API's JSON the
/// quantity is an exact decimal string, as every quantity the API shows (not ClickHouse's
/// units of 10^-9).
#[derive(Debug, Clone, clickhouse::Row, Deserialize, Serialize)]
pub struct WindowUsage {
    pub window_start: u32,
    pub agent: String,
    pub group_key: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
}

/// Why a charge cannot be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("no charge {0}")]
    NotFound(String),
    #[error("charge {charge_id}: stored {field} is unreadable: {detail}")]
    Unreadable {
        charge_id: String,
        field: &'static str,
        detail: String,
    },
}

/// Reads the latest version of a charge and the usage windows it covers (of its period, from
/// its first window to its last).
pub async fn load(
    db: &Client,
    charge_id: &str,
) -> Result<(StoredCharge, Vec<WindowUsage>), ExplainError> {
    let charge = db
        .query("SELECT ?fields FROM v_charges WHERE charge_id = ? LIMIT 1")
        .bind(charge_id)
        .fetch_optional::<StoredCharge>()
        .await?
        .ok_or_else(|| ExplainError::NotFound(charge_id.to_owned()))?;
    // the charge's windows only: one customer, one meter, its span (bounded reads)
    let (from, to) = (
        charge.period_start.max(charge.usage_from),
        charge.period_end.min(charge.usage_to),
    );
    let req = usage::Request {
        from,
        to,
        scope: usage::Scope::Customer(&charge.customer),
        meter: Some(&charge.meter),
        by_agent: true,
        resolution: usage::Resolution::Windows,
        split: &[],
        months_except: None,
        through: None,
    };
    let rows = usage::read(db, &usage::Plan::default(), &req).await?;
    let mut windows = Vec::with_capacity(rows.len());
    for r in rows {
        if charge.group_key != "{}" && r.group_key != charge.group_key {
            continue;
        }
        let quantity = r.quantity().ok_or_else(|| ExplainError::Unreadable {
            charge_id: charge.charge_id.clone(),
            field: "usage quantity",
            detail: format!(
                "window {} of agent {}: value out of range",
                r.start, r.agent
            ),
        })?;
        windows.push(WindowUsage {
            window_start: r.start,
            agent: r.agent,
            group_key: r.group_key,
            quantity,
        });
    }
    windows.sort_by(|a, b| {
        (a.window_start, &a.agent, &a.group_key).cmp(&(b.window_start, &b.agent, &b.group_key))
    });
    Ok((charge, windows))
}

/// Whether a charge's windows must sum to its quantity: SUM and COUNT meters.
pub fn windows_sum_to_quantity(meters: &[Meter], meter: &str) -> bool {
    meters
        .iter()
        .find(|m| m.slug.as_str() == meter)
        .is_some_and(|m| matches!(m.aggregation, Aggregation::Sum | Aggregation::Count))
}

/// A charge explained: readable lines and whether every sum checks out.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub charge_id: String,
    pub lines: Vec<String>,
    /// The lines sum to the amount, the rounding reproduces it, tax and total add up, and
    /// (for SUM and COUNT meters) the windows sum to the quantity.
    pub balanced: bool,
    pub windows: Vec<WindowUsage>,
}

/// Explains `c` from its stored arithmetic and its usage windows. `windows_sum_to_quantity`
/// is checked only when asked (SUM and COUNT meters).
pub fn explain(
    c: &StoredCharge,
    windows: Vec<WindowUsage>,
    windows_sum_to_quantity: bool,
) -> Result<Explanation, ExplainError> {
    let unreadable = |field: &'static str, detail: String| ExplainError::Unreadable {
        charge_id: c.charge_id.clone(),
        field,
        detail,
    };
    let currency: Currency = c
        .currency
        .parse()
        .map_err(|e: tally_domain::money::MoneyError| unreadable("currency", e.to_string()))?;
    let tiers: Vec<TierUse> =
        serde_json::from_str(&c.tiers).map_err(|e| unreadable("tiers", e.to_string()))?;
    let mut out = vec![heading(c)];
    let window_sum: Decimal = windows.iter().map(|w| w.quantity).sum();
    out.push(format!(
        "usage: {} windows from {} to {} sum to {} (charged quantity {})",
        windows.len(),
        windows.first().map_or(0, |w| w.window_start),
        windows.last().map_or(0, |w| w.window_start),
        window_sum,
        c.quantity
    ));
    let mut ok = !windows_sum_to_quantity || window_sum == c.quantity;
    let mut total = Decimal::ZERO;
    let mut before_discounts = Decimal::ZERO;
    for t in &tiers {
        ok &= t.expected_amount() == Some(t.amount);
        out.push(describe(t));
        total += t.amount;
        if t.kind != Some(LineKind::Discount) {
            before_discounts += t.amount;
        }
    }
    let rate: Decimal = if c.fx_rate.is_empty() {
        Decimal::ONE
    } else {
        c.fx_rate
            .parse()
            .map_err(|e: rust_decimal::Error| unreadable("fx_rate", e.to_string()))?
    };
    if !c.fx_rate.is_empty() {
        out.push(format!(
            "converted from {} at {rate}: {total} x {rate} = {}",
            c.price_currency,
            total * rate
        ));
        total *= rate;
        before_discounts *= rate;
    }
    ok &= rounding_and_tax(c, currency, (total, before_discounts), &mut out);
    ok &= c.amount_minor + c.tax_minor == c.amount_with_tax_minor;
    out.push(format!(
        "total {} {} ({} minor units){}",
        currency.from_minor(c.amount_with_tax_minor),
        c.currency,
        c.amount_with_tax_minor,
        if ok {
            ""
        } else {
            "  MISMATCH: the stored amounts do not follow from the lines"
        }
    ));
    Ok(Explanation {
        charge_id: c.charge_id.clone(),
        lines: out,
        balanced: ok,
        windows,
    })
}

/// The first line of an explanation: which charge, for whom, of what.
fn heading(c: &StoredCharge) -> String {
    format!(
        "charge {} for {}, meter {} {}, plan {} v{} ({}), {}",
        c.charge_id,
        c.customer,
        c.meter,
        c.group_key,
        c.plan_id,
        c.plan_version,
        c.price_model,
        c.currency
    )
}

/// Explains the single rounding of the lines' `total` (and of the total before discounts)
/// and the tax on the rounded amount, pushing a line for each; whether both reproduce the
/// stored minor units.
fn rounding_and_tax(
    c: &StoredCharge,
    currency: Currency,
    (total, before_discounts): (Decimal, Decimal),
    out: &mut Vec<String>,
) -> bool {
    let rounded = currency.round(total);
    let minor = currency.to_minor(rounded).unwrap_or(i64::MIN);
    let before_minor = currency
        .to_minor(currency.round(before_discounts))
        .unwrap_or(i64::MIN);
    let mut ok = minor == c.amount_minor && before_minor == c.amount_before_discounts_minor;
    out.push(format!(
        "lines sum to {total}; rounded once to {} decimals, half away from zero: {rounded} {} \
         (before discounts {}, discounts {})",
        currency.minor_units(),
        c.currency,
        currency.from_minor(c.amount_before_discounts_minor),
        currency.from_minor(c.amount_minor - c.amount_before_discounts_minor),
    ));
    if !c.tax_region.is_empty() {
        let rate: Decimal = c.tax_rate.parse().unwrap_or_default();
        let tax = currency.round(rounded * rate / Decimal::ONE_HUNDRED);
        ok &= currency.to_minor(tax).ok() == Some(c.tax_minor);
        out.push(format!(
            "tax {} {}: {rate}% of {rounded} = {} -> {tax}",
            c.tax_region,
            c.tax_code,
            rounded * rate / Decimal::ONE_HUNDRED
        ));
    }
    ok
}

fn describe(t: &TierUse) -> String {
    let bound = t
        .up_to
        .map_or("and up".to_owned(), |b| format!("up to and including {b}"));
    match (t.kind, t.billed_units) {
        (Some(LineKind::FreeAllowance), _) => {
            format!("free allowance: {} units = 0", t.quantity)
        }
        (Some(LineKind::Minimum), _) => match &t.label {
            Some(label) => format!("minimum true-up ({label}): + {}", t.amount),
            None => format!("minimum true-up: + {}", t.amount),
        },
        (Some(LineKind::Maximum), _) => format!("maximum cap: {}", t.amount),
        (Some(LineKind::Discount), _) => {
            format!("coupon {}: {}", t.label.as_deref().unwrap_or("?"), t.amount)
        }
        (None, Some(units)) => format!(
            "{} units billed as {units} x {} = {}",
            t.quantity, t.unit_price, t.amount
        ),
        (None, None) => format!(
            "tier {} (above {} {bound}): {} x {} = {}",
            t.tier, t.from, t.quantity, t.unit_price, t.amount
        ),
    }
}
