//! The invoice document and how it is built from one customer's charges for one period.
//! Pure: the caller passes the charges, the terms and `now`. Amounts are the charges'
//! already-rounded minor units; every total is a sum of them, so nothing is rounded here.
//!
//! Totals: `subtotal` (before discounts) − `discount` = `net` (the lines' amounts), plus the
//! tax of every line (grouped per rate) = `total`; prepaid credits then lower the `amount_due`
//! (never below zero). A line is a charge of the period (`usage`) or an `adjustment`: late usage
//! of an earlier, already finalized period (see `tally_invoicer::late`).

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{Currency, CustomerId, IdError, MoneyError, Period};
use tally_platform::store::charges::ChargeRow;
use xxhash_rust::xxh3::xxh3_128;

/// An invoice's status as the invoicer builds it (payment states live in the lifecycle).
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

/// Who issues the invoice (`[invoicer.issuer]`); numbers are sequential per issuer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Issuer {
    pub id: String,
    pub name: String,
    pub address: Vec<String>,
    pub tax_id: String,
}

/// A charge as the invoicer reads it from `v_charges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeLine {
    pub charge_id: String,
    pub customer: CustomerId,
    pub period: Period,
    pub meter: String,
    pub group_key: String,
    pub group_names: Vec<String>,
    pub group_values: Vec<String>,
    pub plan_id: String,
    pub plan_version: u32,
    pub price_model: String,
    pub currency: Currency,
    pub quantity: Decimal,
    pub unit_price: String,
    pub tiers_json: String,
    /// After discounts, before tax.
    pub amount_minor: i64,
    pub amount_before_discounts_minor: i64,
    /// Percent as the rater wrote it; empty when untaxed.
    pub tax_rate: String,
    pub tax_minor: i64,
}

/// A stored charge row that is not a charge: its customer id or currency does not validate.
/// The reader leaves such a row out (logged and counted), never the whole read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCharge {
    #[error("charge {charge_id}: customer {customer:?}: {source}")]
    Customer {
        charge_id: String,
        customer: String,
        source: IdError,
    },
    #[error("charge {charge_id} of {customer}: {source}")]
    Currency {
        charge_id: String,
        customer: CustomerId,
        source: MoneyError,
    },
}

/// A stored row's customer and currency, typed; `None` (logged with `table`) when either does
/// not validate: the reader leaves the row out and goes on with every other customer.
pub fn customer_currency(
    table: &str,
    customer: String,
    currency: &str,
) -> Option<(CustomerId, Currency)> {
    let currency = match currency.parse::<Currency>() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(table, %customer, error = %e, "row left out: unknown currency");
            return None;
        }
    };
    match CustomerId::new(customer) {
        Ok(c) => Some((c, currency)),
        Err(e) => {
            tracing::error!(table, error = %e, "row left out: customer id does not validate");
            None
        }
    }
}

impl TryFrom<ChargeRow> for ChargeLine {
    type Error = BadCharge;

    fn try_from(r: ChargeRow) -> Result<ChargeLine, BadCharge> {
        // checked before it is moved, so a refusal can name the value
        if let Err(source) = CustomerId::validate(&r.customer) {
            return Err(BadCharge::Customer {
                charge_id: r.charge_id,
                customer: r.customer,
                source,
            });
        }
        let customer = CustomerId::new(r.customer).map_err(|source| BadCharge::Customer {
            charge_id: r.charge_id.clone(),
            customer: String::new(),
            source,
        })?;
        let currency = match r.currency.parse::<Currency>() {
            Ok(c) => c,
            Err(source) => {
                return Err(BadCharge::Currency {
                    charge_id: r.charge_id,
                    customer,
                    source,
                })
            }
        };
        Ok(ChargeLine {
            charge_id: r.charge_id,
            customer,
            period: Period {
                start_ms: i64::from(r.period_start) * 1000,
                end_ms: i64::from(r.period_end) * 1000,
            },
            meter: r.meter,
            group_key: r.group_key,
            group_names: r.group_names,
            group_values: r.group_values,
            plan_id: r.plan_id,
            plan_version: r.plan_version,
            price_model: r.price_model,
            currency,
            quantity: r.quantity,
            unit_price: r.unit_price,
            tiers_json: r.tiers,
            amount_minor: r.amount_minor,
            amount_before_discounts_minor: r.amount_before_discounts_minor,
            tax_rate: r.tax_rate,
            tax_minor: r.tax_minor,
        })
    }
}

/// Whether a line bills the period's own usage or corrects an earlier period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    #[default]
    Usage,
    /// The difference between a finalized period's latest charge and what its invoice billed.
    Adjustment,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Usage => "usage",
            LineKind::Adjustment => "adjustment",
        }
    }
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub line_no: u32,
    #[serde(default)]
    pub kind: LineKind,
    pub charge_id: String,
    pub meter: String,
    pub group_key: String,
    #[serde(default)]
    pub group_names: Vec<String>,
    #[serde(default)]
    pub group_values: Vec<String>,
    pub description: String,
    pub quantity: Decimal,
    pub price_model: String,
    /// Empty for tiered prices; see `tiers`.
    pub unit_price: String,
    /// The rater's arithmetic: tiers, then discount steps (`kind: discount`).
    pub tiers: serde_json::Value,
    pub plan_id: String,
    pub plan_version: u32,
    #[serde(default)]
    pub amount_before_discounts_minor: i64,
    #[serde(default)]
    pub discount_minor: i64,
    pub amount: Decimal,
    /// After discounts, before tax.
    pub amount_minor: i64,
    #[serde(default)]
    pub tax_rate: String,
    #[serde(default)]
    pub tax_minor: i64,
    /// For an adjustment: the finalized invoice it corrects.
    #[serde(default)]
    pub adjusts_invoice_id: Option<String>,
}

/// The tax of the lines at one rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxAmount {
    /// Percent, e.g. `19`; empty for untaxed lines (not listed).
    pub rate_percent: String,
    pub taxable_minor: i64,
    pub tax_minor: i64,
}

/// One invoice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    pub invoice_id: String,
    /// Assigned once, at finalization (`None` on drafts).
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub issuer: Issuer,
    pub customer: CustomerId,
    pub status: Status,
    pub currency: Currency,
    pub period_start: String,
    pub period_end: String,
    pub period: Period,
    pub issued_at: String,
    /// When this version was built; also the stored row's version.
    #[serde(default)]
    pub issued_at_ms: i64,
    pub due_date: String,
    #[serde(default)]
    pub due_at_ms: i64,
    #[serde(default)]
    pub payment_terms_days: u32,
    pub plan_id: String,
    pub plan_version: u32,
    pub lines: Vec<InvoiceLine>,
    /// Before discounts.
    pub subtotal: Decimal,
    pub subtotal_minor: i64,
    #[serde(default)]
    pub discount_minor: i64,
    /// After discounts, before tax: the sum of the lines' amounts.
    #[serde(default)]
    pub net_minor: i64,
    #[serde(default)]
    pub taxes: Vec<TaxAmount>,
    #[serde(default)]
    pub tax_minor: i64,
    pub total: Decimal,
    pub total_minor: i64,
    /// Prepaid credits applied to this invoice.
    #[serde(default)]
    pub credits_applied_minor: i64,
    #[serde(default)]
    pub amount_due: Decimal,
    #[serde(default)]
    pub amount_due_minor: i64,
    /// Prepaid credit the customer still holds in the invoice's currency after this invoice
    /// (the payments wallet's balance plus the rest of the invoicer's grants), when it has
    /// any credit; shown under the amount due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_balance_minor: Option<i64>,
}

/// What an invoice is built with besides its charges.
#[derive(Debug, Clone, Default)]
pub struct Terms {
    /// How long after the period end the invoice stays a draft.
    pub grace_ms: i64,
    /// Days from the period end to the due date.
    pub payment_terms_days: u32,
    pub issuer: Issuer,
    /// Prepaid credit available to this invoice, in its currency: what the payments wallet
    /// reserved for the period's usage plus what is left of the invoicer's grants.
    pub credit_available_minor: i64,
}

/// Why an invoice cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invoice without charges")]
    Empty,
    #[error("invoice for {customer}: charges in several currencies ({0:?})", .currencies)]
    MixedCurrencies {
        customer: CustomerId,
        currencies: Vec<&'static str>,
    },
    #[error("invoice for {customer}: total overflows")]
    Overflow { customer: CustomerId },
}

/// The period of the invoice of `charges` (one customer, period start and currency): the
/// shortest non-empty period among them (an empty one, a fee billed in advance at an instant,
/// only when all are). Charges that start together but end apart (an annual fee and January's
/// usage, a quarter and its first month) are one invoice, finalized one grace after the
/// shortest period ends whatever order the charges were read in: the longer period's fee is
/// invoiced with the first shorter period, and changes to it after that invoice is finalized
/// are late usage (an adjustment or a credit note against it).
pub fn invoice_period(charges: &[ChargeLine]) -> Option<Period> {
    charges
        .iter()
        .map(|c| c.period)
        .min_by_key(|p| (p.end_ms <= p.start_ms, p.end_ms))
}

/// The deterministic id of a subscription's invoice for a period. A customer has one
/// subscription at a time (the catalog's subscription versions are per customer), so the
/// subscription is named by its customer. A period billed in several currencies keeps this id
/// for its home currency; the others' ids are [`crate::currency_split::invoice_id_in`].
pub fn invoice_id(customer: &str, period_start_ms: i64) -> String {
    format!(
        "inv_{:032x}",
        xxh3_128(format!("{customer}\0{period_start_ms}").as_bytes())
    )
}

/// RFC 3339 (seconds, `Z`) of an instant in ms.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Builds the invoice of `charges` (all of one customer, period and currency) at `now_ms`,
/// under the period's plain id [`invoice_id`]; adjustment lines (already built, see
/// `tally_invoicer::late`) follow the period's own lines.
pub fn build(
    charges: &[ChargeLine],
    adjustments: Vec<InvoiceLine>,
    terms: &Terms,
    now_ms: i64,
) -> Result<Invoice, BuildError> {
    let first = charges.first().ok_or(BuildError::Empty)?;
    let id = invoice_id(first.customer.as_str(), first.period.start_ms);
    build_as(id, charges, adjustments, terms, now_ms)
}

/// [`build`] under `invoice_id` (a period with several currencies has one invoice per
/// currency, see [`crate::currency_split`]).
pub fn build_as(
    invoice_id: String,
    charges: &[ChargeLine],
    adjustments: Vec<InvoiceLine>,
    terms: &Terms,
    now_ms: i64,
) -> Result<Invoice, BuildError> {
    let first = charges.first().ok_or(BuildError::Empty)?;
    let customer = first.customer.clone();
    let currency = one_currency(charges, &customer)?;
    let mut sorted: Vec<&ChargeLine> = charges.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.meter, &a.group_key, &a.charge_id).cmp(&(&b.meter, &b.group_key, &b.charge_id))
    });
    let mut lines: Vec<InvoiceLine> = sorted.iter().map(|c| line(c, currency)).collect();
    lines.extend(adjustments);
    for (i, l) in lines.iter_mut().enumerate() {
        l.line_no = i as u32 + 1;
    }
    let period = invoice_period(charges).unwrap_or(first.period);
    let status = if now_ms >= period.end_ms + terms.grace_ms {
        Status::Finalized
    } else {
        Status::Draft
    };
    let due_at_ms =
        period.end_ms + Duration::days(i64::from(terms.payment_terms_days)).num_milliseconds();
    let mut inv = Invoice {
        invoice_id,
        number: None,
        issuer: terms.issuer.clone(),
        customer: customer.clone(),
        status,
        currency,
        period_start: rfc3339(period.start_ms),
        period_end: rfc3339(period.end_ms),
        period,
        issued_at: rfc3339(now_ms),
        issued_at_ms: now_ms,
        due_date: rfc3339(due_at_ms),
        due_at_ms,
        payment_terms_days: terms.payment_terms_days,
        plan_id: first.plan_id.clone(),
        plan_version: first.plan_version,
        lines,
        subtotal: Decimal::ZERO,
        subtotal_minor: 0,
        discount_minor: 0,
        net_minor: 0,
        taxes: Vec::new(),
        tax_minor: 0,
        total: Decimal::ZERO,
        total_minor: 0,
        credits_applied_minor: 0,
        amount_due: Decimal::ZERO,
        amount_due_minor: 0,
        credit_balance_minor: None,
    };
    totals(&mut inv, currency, terms.credit_available_minor)
        .ok_or(BuildError::Overflow { customer })?;
    Ok(inv)
}

fn one_currency(charges: &[ChargeLine], customer: &CustomerId) -> Result<Currency, BuildError> {
    let first = charges.first().ok_or(BuildError::Empty)?.currency;
    if charges.iter().all(|c| c.currency == first) {
        return Ok(first);
    }
    let mut currencies: Vec<&'static str> = charges.iter().map(|c| c.currency.code()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    Err(BuildError::MixedCurrencies {
        customer: customer.clone(),
        currencies,
    })
}

/// The line of one charge (line number set by the caller).
pub fn line(c: &ChargeLine, currency: Currency) -> InvoiceLine {
    InvoiceLine {
        line_no: 0,
        kind: LineKind::Usage,
        charge_id: c.charge_id.clone(),
        meter: c.meter.clone(),
        group_key: c.group_key.clone(),
        group_names: c.group_names.clone(),
        group_values: c.group_values.clone(),
        description: describe(c),
        quantity: c.quantity,
        price_model: c.price_model.clone(),
        unit_price: c.unit_price.clone(),
        tiers: serde_json::from_str(&c.tiers_json).unwrap_or(serde_json::Value::Null),
        plan_id: c.plan_id.clone(),
        plan_version: c.plan_version,
        amount_before_discounts_minor: c.amount_before_discounts_minor,
        discount_minor: c.amount_before_discounts_minor - c.amount_minor,
        amount: currency.from_minor(c.amount_minor),
        amount_minor: c.amount_minor,
        tax_rate: c.tax_rate.clone(),
        tax_minor: c.tax_minor,
        adjusts_invoice_id: None,
    }
}

/// Fills the totals from the lines; `None` on overflow.
fn totals(inv: &mut Invoice, currency: Currency, credit_available_minor: i64) -> Option<()> {
    let sum = |f: fn(&InvoiceLine) -> i64| {
        inv.lines
            .iter()
            .try_fold(0i64, |acc, l| acc.checked_add(f(l)))
    };
    inv.subtotal_minor = sum(|l| l.amount_before_discounts_minor)?;
    inv.net_minor = sum(|l| l.amount_minor)?;
    inv.discount_minor = inv.subtotal_minor.checked_sub(inv.net_minor)?;
    inv.tax_minor = sum(|l| l.tax_minor)?;
    let mut taxes: Vec<TaxAmount> = Vec::new();
    for l in inv.lines.iter().filter(|l| !l.tax_rate.is_empty()) {
        match taxes.iter_mut().find(|t| t.rate_percent == l.tax_rate) {
            Some(t) => {
                t.taxable_minor = t.taxable_minor.checked_add(l.amount_minor)?;
                t.tax_minor = t.tax_minor.checked_add(l.tax_minor)?;
            }
            None => taxes.push(TaxAmount {
                rate_percent: l.tax_rate.clone(),
                taxable_minor: l.amount_minor,
                tax_minor: l.tax_minor,
            }),
        }
    }
    taxes.sort_by(|a, b| a.rate_percent.cmp(&b.rate_percent));
    inv.taxes = taxes;
    inv.total_minor = inv.net_minor.checked_add(inv.tax_minor)?;
    inv.credits_applied_minor = credit_available_minor.clamp(0, inv.total_minor.max(0));
    inv.amount_due_minor = inv.total_minor - inv.credits_applied_minor;
    inv.subtotal = currency.from_minor(inv.subtotal_minor);
    inv.total = currency.from_minor(inv.total_minor);
    inv.amount_due = currency.from_minor(inv.amount_due_minor);
    debug_assert_eq!(
        inv.subtotal_minor - inv.discount_minor + inv.tax_minor - inv.credits_applied_minor,
        inv.amount_due_minor
    );
    Some(())
}

fn describe(c: &ChargeLine) -> String {
    let group = if c.group_key == "{}" || c.group_key.is_empty() {
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
            "{}{group}: {} units, {model}",
            c.meter,
            c.quantity.normalize()
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn charge(meter: &str, minor: i64) -> ChargeLine {
        ChargeLine {
            charge_id: format!("chg_{meter}"),
            customer: CustomerId::new("acme").unwrap(),
            period: Period {
                start_ms: 0,
                end_ms: 1_000,
            },
            meter: meter.into(),
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            plan_id: "p".into(),
            plan_version: 2,
            price_model: "per_unit".into(),
            currency: "USD".parse().unwrap(),
            quantity: Decimal::from(10),
            unit_price: "0.5".into(),
            tiers_json: "[]".into(),
            amount_minor: minor,
            amount_before_discounts_minor: minor,
            tax_rate: String::new(),
            tax_minor: 0,
        }
    }

    fn stored(customer: &str, currency: &str) -> ChargeRow {
        ChargeRow {
            charge_id: "chg_1".into(),
            customer: customer.into(),
            period_start: 1_767_225_600,
            period_end: 1_769_904_000,
            meter: "llm_tokens".into(),
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            plan_id: "p".into(),
            plan_version: 2,
            price_model: "per_unit".into(),
            currency: currency.into(),
            quantity: Decimal::new(15, 1),
            unit_price: "0.5".into(),
            tiers: "[]".into(),
            amount_minor: 75,
            amount_before_discounts_minor: 80,
            tax_region: String::new(),
            tax_code: String::new(),
            tax_rate: "19".into(),
            tax_minor: 14,
            amount_with_tax_minor: 89,
            price_currency: currency.into(),
            fx_rate: String::new(),
            windows: 1,
            usage_from: 1_767_225_600,
            usage_to: 1_767_225_660,
            computed_at: 1_769_904_000,
            version: 1,
        }
    }

    #[test]
    fn a_stored_row_becomes_a_typed_charge_or_a_reason() {
        let c = ChargeLine::try_from(stored("acme-1", "BHD")).unwrap();
        assert_eq!(
            (c.customer.as_str(), c.currency.minor_units()),
            ("acme-1", 3)
        );
        assert_eq!(
            c.period,
            Period {
                start_ms: 1_767_225_600_000,
                end_ms: 1_769_904_000_000
            }
        );
        assert_eq!(
            (c.amount_minor, c.amount_before_discounts_minor, c.tax_minor),
            (75, 80, 14)
        );
        assert_eq!(c.tiers_json, "[]");
        let bad = ChargeLine::try_from(stored("acme-1", "ZZZ")).unwrap_err();
        assert!(matches!(bad, BadCharge::Currency { .. }), "{bad}");
        assert!(bad.to_string().contains("chg_1 of acme-1"), "{bad}");
        let bad = ChargeLine::try_from(stored("a.b", "USD")).unwrap_err();
        assert!(
            matches!(&bad, BadCharge::Customer { customer, .. } if customer == "a.b"),
            "{bad}"
        );
    }

    #[test]
    fn an_invoice_has_the_shortest_non_empty_period_of_its_charges() {
        let month = charge("tokens", 1);
        let mut year = charge("seats", 2);
        year.period.end_ms = 12_000;
        let mut advance = charge("fee", 3);
        advance.period.end_ms = advance.period.start_ms;
        for order in [
            vec![year.clone(), month.clone(), advance.clone()],
            vec![advance.clone(), month.clone(), year.clone()],
        ] {
            assert_eq!(invoice_period(&order), Some(month.period));
        }
        assert_eq!(invoice_period(&[advance.clone()]), Some(advance.period));
        assert_eq!(invoice_period(&[]), None);
    }

    fn terms(grace_ms: i64) -> Terms {
        Terms {
            grace_ms,
            payment_terms_days: 30,
            ..Terms::default()
        }
    }

    #[test]
    fn totals_are_sums_of_lines_in_minor_units() {
        let inv = build(&[charge("b", 250), charge("a", 1)], vec![], &terms(0), 500).unwrap();
        assert_eq!(
            inv.lines
                .iter()
                .map(|l| l.meter.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(inv.subtotal_minor, 251);
        assert_eq!(inv.total, Decimal::new(251, 2));
        assert_eq!(inv.amount_due_minor, 251);
        assert_eq!(inv.lines[1].amount, Decimal::new(250, 2));
        assert_eq!(inv.status, Status::Draft);
        assert_eq!(inv.invoice_id, invoice_id("acme", 0));
    }

    #[test]
    fn discounts_tax_per_rate_and_credits() {
        let mut a = charge("a", 900);
        a.amount_before_discounts_minor = 1000;
        a.tax_rate = "19".into();
        a.tax_minor = 171;
        let mut b = charge("b", 500);
        b.tax_rate = "7".into();
        b.tax_minor = 35;
        let mut c = charge("c", 100);
        c.tax_rate = "19".into();
        c.tax_minor = 19;
        let mut t = terms(0);
        t.credit_available_minor = 600;
        let inv = build(&[a, b, c], vec![], &t, 0).unwrap();
        assert_eq!(inv.subtotal_minor, 1600);
        assert_eq!(inv.discount_minor, 100);
        assert_eq!(inv.net_minor, 1500);
        assert_eq!(
            inv.taxes,
            vec![
                TaxAmount {
                    rate_percent: "19".into(),
                    taxable_minor: 1000,
                    tax_minor: 190
                },
                TaxAmount {
                    rate_percent: "7".into(),
                    taxable_minor: 500,
                    tax_minor: 35
                }
            ]
        );
        assert_eq!(inv.tax_minor, 225);
        assert_eq!(inv.total_minor, 1725);
        assert_eq!(inv.credits_applied_minor, 600);
        assert_eq!(inv.amount_due_minor, 1125);
        t.credit_available_minor = 5000;
        let covered = build(&[charge("a", 10)], vec![], &t, 0).unwrap();
        assert_eq!(
            (covered.credits_applied_minor, covered.amount_due_minor),
            (10, 0)
        );
    }

    #[test]
    fn finalized_after_the_grace_period() {
        assert_eq!(
            build(&[charge("a", 1)], vec![], &terms(1_000), 1_999)
                .unwrap()
                .status,
            Status::Draft
        );
        assert_eq!(
            build(&[charge("a", 1)], vec![], &terms(1_000), 2_000)
                .unwrap()
                .status,
            Status::Finalized
        );
    }

    #[test]
    fn mixed_currencies_are_refused() {
        let mut eur = charge("b", 1);
        eur.currency = "EUR".parse().unwrap();
        assert!(matches!(
            build(&[charge("a", 1), eur], vec![], &terms(0), 0),
            Err(BuildError::MixedCurrencies { .. })
        ));
    }
}
