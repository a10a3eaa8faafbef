//! The invoice document and how it is built from one customer's charges for one period.
//! Pure: the caller passes the charges and `now`. Amounts are the charges' already-rounded
//! minor units; totals are their sums, so nothing is rounded here.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{Currency, MoneyError, Period};
use xxhash_rust::xxh3::xxh3_128;

/// An invoice's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The period is open or in its grace period; the invoice follows new usage.
    Draft,
    /// Closed; never rewritten.
    Finalized,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Finalized => "finalized",
        }
    }
}

/// A charge as the invoicer reads it from `v_charges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeLine {
    pub charge_id: String,
    pub customer: String,
    pub period: Period,
    pub meter: String,
    pub group_key: String,
    pub plan_id: String,
    pub plan_version: u32,
    pub price_model: String,
    pub currency: String,
    pub quantity: Decimal,
    pub unit_price: String,
    pub tiers_json: String,
    pub amount_minor: i64,
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvoiceLine {
    pub line_no: u32,
    pub charge_id: String,
    pub meter: String,
    pub group_key: String,
    pub description: String,
    pub quantity: Decimal,
    pub price_model: String,
    /// Empty for tiered prices; see `tiers`.
    pub unit_price: String,
    pub tiers: serde_json::Value,
    pub plan_id: String,
    pub plan_version: u32,
    pub amount: Decimal,
    pub amount_minor: i64,
}

/// One invoice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invoice {
    pub invoice_id: String,
    pub customer: String,
    pub status: Status,
    pub currency: String,
    pub period_start: String,
    pub period_end: String,
    #[serde(skip)]
    pub period: Period,
    pub issued_at: String,
    pub due_date: String,
    pub plan_id: String,
    pub plan_version: u32,
    pub lines: Vec<InvoiceLine>,
    pub subtotal: Decimal,
    pub subtotal_minor: i64,
    pub total: Decimal,
    pub total_minor: i64,
}

/// Why an invoice cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invoice for {customer}: charges in several currencies ({0:?})", .currencies)]
    MixedCurrencies {
        customer: String,
        currencies: Vec<String>,
    },
    #[error("invoice for {customer}: {source}")]
    Currency {
        customer: String,
        source: MoneyError,
    },
    #[error("invoice for {customer}: total overflows")]
    Overflow { customer: String },
}

/// The deterministic id of a customer's invoice for a period.
pub fn invoice_id(customer: &str, period_start_ms: i64) -> String {
    format!(
        "inv_{:032x}",
        xxh3_128(format!("{customer}\0{period_start_ms}").as_bytes())
    )
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Builds the invoice of `charges` (all of one customer and period, non-empty) at `now_ms`.
pub fn build(
    charges: &[ChargeLine],
    now_ms: i64,
    grace_ms: i64,
    payment_terms_days: u32,
) -> Result<Invoice, BuildError> {
    let first = charges
        .first()
        .expect("an invoice needs at least one charge");
    let customer = first.customer.clone();
    let mut currencies: Vec<String> = charges.iter().map(|c| c.currency.clone()).collect();
    currencies.sort();
    currencies.dedup();
    if currencies.len() > 1 {
        return Err(BuildError::MixedCurrencies {
            customer,
            currencies,
        });
    }
    let currency: Currency = first
        .currency
        .parse()
        .map_err(|source| BuildError::Currency {
            customer: customer.clone(),
            source,
        })?;
    let mut sorted: Vec<&ChargeLine> = charges.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.meter, &a.group_key, &a.charge_id).cmp(&(&b.meter, &b.group_key, &b.charge_id))
    });
    let lines: Vec<InvoiceLine> = sorted
        .iter()
        .enumerate()
        .map(|(i, c)| InvoiceLine {
            line_no: i as u32 + 1,
            charge_id: c.charge_id.clone(),
            meter: c.meter.clone(),
            group_key: c.group_key.clone(),
            description: describe(c),
            quantity: c.quantity,
            price_model: c.price_model.clone(),
            unit_price: c.unit_price.clone(),
            tiers: serde_json::from_str(&c.tiers_json).unwrap_or(serde_json::Value::Null),
            plan_id: c.plan_id.clone(),
            plan_version: c.plan_version,
            amount: currency.from_minor(c.amount_minor),
            amount_minor: c.amount_minor,
        })
        .collect();
    let subtotal_minor = lines
        .iter()
        .try_fold(0i64, |acc, l| acc.checked_add(l.amount_minor))
        .ok_or_else(|| BuildError::Overflow {
            customer: customer.clone(),
        })?;
    let period = first.period;
    let status = if now_ms >= period.end_ms + grace_ms {
        Status::Finalized
    } else {
        Status::Draft
    };
    Ok(Invoice {
        invoice_id: invoice_id(&customer, period.start_ms),
        customer,
        status,
        currency: currency.code().to_owned(),
        period_start: rfc3339(period.start_ms),
        period_end: rfc3339(period.end_ms),
        period,
        issued_at: rfc3339(now_ms),
        due_date: rfc3339(
            period.end_ms + Duration::days(i64::from(payment_terms_days)).num_milliseconds(),
        ),
        plan_id: first.plan_id.clone(),
        plan_version: first.plan_version,
        lines,
        subtotal: currency.from_minor(subtotal_minor),
        subtotal_minor,
        total: currency.from_minor(subtotal_minor),
        total_minor: subtotal_minor,
    })
}

fn describe(c: &ChargeLine) -> String {
    let group = if c.group_key == "{}" {
        String::new()
    } else {
        format!(" {}", c.group_key)
    };
    match c.price_model.as_str() {
        "per_unit" => format!(
            "{}{group}: {} units at {} {}",
            c.meter,
            c.quantity.normalize(),
            c.unit_price,
            c.currency
        ),
        model => format!(
            "{}{group}: {} units, {model} tiers",
            c.meter,
            c.quantity.normalize()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(meter: &str, minor: i64) -> ChargeLine {
        ChargeLine {
            charge_id: format!("chg_{meter}"),
            customer: "acme".into(),
            period: Period {
                start_ms: 0,
                end_ms: 1_000,
            },
            meter: meter.into(),
            group_key: "{}".into(),
            plan_id: "p".into(),
            plan_version: 2,
            price_model: "per_unit".into(),
            currency: "USD".into(),
            quantity: Decimal::from(10),
            unit_price: "0.5".into(),
            tiers_json: "[]".into(),
            amount_minor: minor,
        }
    }

    #[test]
    fn totals_are_sums_of_lines_in_minor_units() {
        let inv = build(&[charge("b", 250), charge("a", 1)], 500, 0, 30).unwrap();
        assert_eq!(
            inv.lines
                .iter()
                .map(|l| l.meter.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(inv.subtotal_minor, 251);
        assert_eq!(inv.total, Decimal::new(251, 2));
        assert_eq!(inv.lines[1].amount, Decimal::new(250, 2));
        assert_eq!(inv.status, Status::Draft);
        assert_eq!(inv.invoice_id, invoice_id("acme", 0));
    }

    #[test]
    fn finalized_after_the_grace_period() {
        assert_eq!(
            build(&[charge("a", 1)], 1_999, 1_000, 30).unwrap().status,
            Status::Draft
        );
        assert_eq!(
            build(&[charge("a", 1)], 2_000, 1_000, 30).unwrap().status,
            Status::Finalized
        );
    }

    #[test]
    fn mixed_currencies_are_refused() {
        let mut eur = charge("b", 1);
        eur.currency = "EUR".into();
        assert!(matches!(
            build(&[charge("a", 1), eur], 0, 0, 30),
            Err(BuildError::MixedCurrencies { .. })
        ));
    }
}
