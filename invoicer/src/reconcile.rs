//! Reconciliation: per billing period, committed usage → charges → invoice lines, reporting
//! every difference. Read-only.
//!
//! - usage → charges: for additive meters (SUM, COUNT), the committed quantity of
//!   (customer, meter, period) (read for the charges' periods only, `tally_platform::usage`)
//!   against the quantity of its charges. A fee billed in advance is left out: its charge
//!   sits on the invoice of the period before the one it pays for and carries no usage (its
//!   usage span starts where that invoice period ends, which no usage charge's does).
//! - charges → invoices: for every invoice (latest version), the charges of its period in its
//!   currency (a period billed in several currencies has an invoice per currency) against its
//!   usage lines; for a finalized invoice, what changed since (late usage) must be
//!   covered by adjustment lines on later invoices (finalized, or pending on a draft; both
//!   reported) and late-usage credit notes.
//!
//! The metric `tally_invoicer_reconciliation_difference_minor` is the sum of the absolute
//! unexplained money differences of the last reconciliation.

use std::collections::BTreeMap;

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_platform::store::dec9;
use tally_platform::usage;

/// Per (customer, meter): the charged periods (start, end, and the charge's quantity when
/// it has one).
type ChargedPeriods = BTreeMap<(String, String), Vec<(u32, u32, Option<Decimal>)>>;

/// One (customer, meter, period) whose charged quantity differs from committed usage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuantityDifference {
    pub customer: String,
    pub meter: String,
    pub period_start: u32,
    pub usage_quantity: Decimal,
    pub charged_quantity: Decimal,
}

/// One invoice whose lines differ from its period's charges.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MoneyDifference {
    pub invoice_id: String,
    /// As stored (a report shows what is there, valid or not).
    pub customer: String,
    pub status: String,
    pub period_start: u32,
    pub charges_minor: i64,
    pub invoiced_minor: i64,
    /// Adjustment lines on later non-draft invoices correcting this one.
    pub adjusted_minor: i64,
    /// Adjustment lines on drafts (the customer's next invoice, not yet finalized).
    pub pending_minor: i64,
    /// Late-usage credit notes against this invoice.
    pub credited_minor: i64,
    /// `charges - invoiced - adjusted - pending + credited`: late usage on no invoice yet.
    pub unexplained_minor: i64,
}

/// A reconciliation report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub periods_checked: usize,
    pub invoices_checked: usize,
    pub quantity_differences: Vec<QuantityDifference>,
    pub money_differences: Vec<MoneyDifference>,
    /// Sum of `|unexplained_minor|`.
    pub difference_minor: i64,
    /// Customers whose committed usage could not be read exactly (a quantity beyond what a
    /// charge can hold): not compared, reported so they are looked at.
    pub unreadable_usage: Vec<String>,
}

#[derive(Deserialize, clickhouse::Row)]
struct InvoiceSums {
    invoice_id: String,
    /// As stored: one bad row must not fail the reconciliation of every invoice.
    customer: String,
    status: String,
    period_start: u32,
    currency: String,
    invoiced_minor: i64,
}

#[derive(Deserialize, clickhouse::Row)]
struct Sum {
    key: String,
    minor: i64,
}

/// Reconciles every period that ended after `since_ms` (or is open).
pub async fn run(db: &Client, since_ms: i64) -> Result<Report, clickhouse::error::Error> {
    let since = since_ms.div_euclid(1000);
    let mut unreadable = Vec::new();
    let usage = usage_vs_charges(db, since, &mut unreadable).await?;
    let invoices = invoice_sums(db, since).await?;
    let charges = sums(
        db,
        "SELECT concat(customer, '\\0', toString(toUInt32(period_start)), '\\0', currency) AS k, \
         toInt64(sum(amount_minor)) FROM v_charges WHERE period_end > toDateTime(?) GROUP BY k",
        since,
    )
    .await?;
    let adjusted = sums(db, &adjustments_sql("status != 'draft'"), since).await?;
    let pending = sums(db, &adjustments_sql("status = 'draft'"), since).await?;
    let credited = sums(
        db,
        "SELECT invoice_id AS k, toInt64(sum(amount_minor)) FROM v_credit_notes \
         WHERE charge_id != '' GROUP BY k",
        since,
    )
    .await?;
    let mut report = Report {
        periods_checked: charges.len(),
        invoices_checked: invoices.len(),
        quantity_differences: usage,
        unreadable_usage: unreadable,
        ..Report::default()
    };
    for inv in invoices {
        // a period billed in several currencies has one invoice per currency
        let key = format!("{}\0{}\0{}", inv.customer, inv.period_start, inv.currency);
        let charged = charges.get(&key).copied().unwrap_or(0);
        let adjusted = adjusted.get(&inv.invoice_id).copied().unwrap_or(0);
        let pending = pending.get(&inv.invoice_id).copied().unwrap_or(0);
        let credited = credited.get(&inv.invoice_id).copied().unwrap_or(0);
        let unexplained = if inv.status == "draft" {
            charged - inv.invoiced_minor
        } else {
            charged - inv.invoiced_minor - adjusted - pending + credited
        };
        if charged != inv.invoiced_minor || unexplained != 0 {
            report.difference_minor += unexplained.abs();
            report.money_differences.push(MoneyDifference {
                invoice_id: inv.invoice_id,
                customer: inv.customer,
                status: inv.status,
                period_start: inv.period_start,
                charges_minor: charged,
                invoiced_minor: inv.invoiced_minor,
                adjusted_minor: adjusted,
                pending_minor: pending,
                credited_minor: credited,
                unexplained_minor: unexplained,
            });
        }
    }
    crate::metrics::reconciliation(report.difference_minor, report.quantity_differences.len());
    Ok(report)
}

#[derive(Deserialize, clickhouse::Row)]
struct Charged {
    customer: String,
    meter: String,
    period_start: u32,
    period_end: u32,
    #[serde(with = "dec9")]
    quantity: Decimal,
}

/// Committed usage against charged quantity per (customer, meter, period), summed here: no
/// Decimal is ever a GROUP BY key (that crashes ClickHouse 18.16). The usage is read for the
/// charges' periods only (`tally_platform::usage`: sealed days, then the partials), and the
/// days a period starts or ends inside are read per window, so every period is cut exactly.
/// A customer whose usage cannot be represented (beyond 7.9 * 10^19) is reported in
/// `unreadable`, never failing the run.
async fn usage_vs_charges(
    db: &Client,
    since: i64,
    unreadable: &mut Vec<String>,
) -> Result<Vec<QuantityDifference>, clickhouse::error::Error> {
    let charged = charged_since(db, since).await?;
    let Some(span) = UsageSpan::of(&charged) else {
        return Ok(Vec::new());
    };
    let usage = fold_usage(db, &span.request(), &charged).await?;
    unreadable.extend(usage.bad);
    unreadable.sort();
    unreadable.dedup();
    Ok(differences(
        charged,
        &usage.periods,
        &usage.seen,
        unreadable,
    ))
}

/// The charged quantity per (customer, meter, period) of the periods ending after `since`.
async fn charged_since(db: &Client, since: i64) -> Result<Vec<Charged>, clickhouse::error::Error> {
    db.query(
        "SELECT customer, meter, toUInt32(period_start), toUInt32(period_end), sum(quantity) \
         FROM v_charges WHERE period_end > toDateTime(?) AND usage_from < period_end \
         GROUP BY customer, meter, period_start, period_end",
    )
    .bind(since)
    .fetch_all()
    .await
}

/// What usage the charges need read: whole UTC days covering every period, the days a period
/// starts or ends inside read per window, and the customers whose periods are not UTC
/// calendar months (their sealed days one by one; the others' come folded per month).
struct UsageSpan {
    from: u32,
    to: u32,
    split: Vec<(String, u32)>,
    by_day: Vec<String>,
}

impl UsageSpan {
    /// `None` when nothing is charged.
    fn of(charged: &[Charged]) -> Option<UsageSpan> {
        const DAY: u32 = 86_400;
        let from = charged.iter().map(|c| c.period_start).min()?;
        let to = charged.iter().map(|c| c.period_end).max()?;
        let split: Vec<(String, u32)> = charged
            .iter()
            .flat_map(|c| [(c, c.period_start), (c, c.period_end)])
            .filter(|(_, b)| b % DAY != 0)
            .map(|(c, b)| (c.customer.clone(), b - b % DAY))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let month_start = |secs: u32| {
            chrono::DateTime::<chrono::Utc>::from_timestamp(i64::from(secs), 0).is_some_and(|t| {
                use chrono::{Datelike, Timelike};
                t.day() == 1 && t.num_seconds_from_midnight() == 0
            })
        };
        let by_day: Vec<String> = charged
            .iter()
            .filter(|c| !month_start(c.period_start) || !month_start(c.period_end))
            .map(|c| c.customer.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Some(UsageSpan {
            from: from - from % DAY,
            to: to.div_ceil(DAY).saturating_mul(DAY),
            split,
            by_day,
        })
    }

    fn request(&self) -> usage::Request<'_> {
        usage::Request {
            from: self.from,
            to: self.to,
            scope: usage::Scope::All,
            meter: None,
            by_agent: false,
            resolution: usage::Resolution::Days,
            split: &self.split,
            months_except: Some(&self.by_day),
            through: None,
        }
    }
}

/// Committed usage summed into the charged periods.
struct FoldedUsage {
    /// Per (customer, meter) its charged periods with their usage (`None`: not representable).
    periods: ChargedPeriods,
    /// (customer, meter) with any committed usage in the range: only those are compared.
    seen: std::collections::BTreeSet<(String, String)>,
    /// Customers whose usage could not be represented.
    bad: std::collections::BTreeSet<String>,
}

/// Streams the SUM and COUNT usage of `req` into the charged periods of each (customer,
/// meter), so memory follows the charges, never the usage rows.
async fn fold_usage(
    db: &Client,
    req: &usage::Request<'_>,
    charged: &[Charged],
) -> Result<FoldedUsage, clickhouse::error::Error> {
    let mut periods: ChargedPeriods = BTreeMap::new();
    for c in charged {
        periods
            .entry((c.customer.clone(), c.meter.clone()))
            .or_default()
            .push((c.period_start, c.period_end, Some(Decimal::ZERO)));
    }
    let mut bad: std::collections::BTreeSet<String> = Default::default();
    let mut seen: std::collections::BTreeSet<(String, String)> = Default::default();
    let plan = usage::plan(db, req.from).await?;
    usage::read_each(db, &plan, req, |u| {
        if !matches!(u.aggregation.as_str(), "SUM" | "COUNT") {
            return;
        }
        let key = (u.customer.clone(), u.meter.clone());
        let Some(list) = periods.get_mut(&key) else {
            return;
        };
        seen.insert(key);
        let Some(slot) = list
            .iter_mut()
            .find(|(s, e, _)| (*s..*e).contains(&u.start))
        else {
            return;
        };
        slot.2 = match (slot.2, u.quantity()) {
            (Some(total), Some(q)) => total.checked_add(q),
            _ => None,
        };
        if slot.2.is_none() {
            bad.insert(u.customer.clone());
        }
    })
    .await?;
    Ok(FoldedUsage { periods, seen, bad })
}

/// The charges whose quantity differs from the committed usage of their period (only meters
/// with usage in the range; customers already `unreadable` skipped, newly unreadable ones
/// added).
fn differences(
    charged: Vec<Charged>,
    periods: &ChargedPeriods,
    seen: &std::collections::BTreeSet<(String, String)>,
    unreadable: &mut Vec<String>,
) -> Vec<QuantityDifference> {
    let mut out = Vec::new();
    for c in charged {
        if unreadable.contains(&c.customer) {
            continue;
        }
        let key = (c.customer.clone(), c.meter.clone());
        let usage = periods
            .get(&key)
            .filter(|_| seen.contains(&key))
            .and_then(|list| {
                list.iter()
                    .find(|(s, e, _)| (*s, *e) == (c.period_start, c.period_end))
                    .map(|p| p.2)
            });
        let known_meter = usage.is_some();
        let Some(usage) = usage.unwrap_or(Some(Decimal::ZERO)) else {
            unreadable.push(c.customer.clone());
            continue;
        };
        if known_meter && usage != c.quantity {
            out.push(QuantityDifference {
                customer: c.customer,
                meter: c.meter,
                period_start: c.period_start,
                usage_quantity: usage,
                charged_quantity: c.quantity,
            });
        }
    }
    out
}

async fn invoice_sums(
    db: &Client,
    since: i64,
) -> Result<Vec<InvoiceSums>, clickhouse::error::Error> {
    db.query(
        "SELECT invoice_id, customer, status, ps, currency, invoiced FROM \
         (SELECT invoice_id, version, customer, status, toUInt32(period_start) AS ps, currency FROM v_invoices \
          WHERE period_end > toDateTime(?)) AS i \
         ANY LEFT JOIN \
         (SELECT invoice_id, version, toInt64(sumIf(amount_minor, kind != 'adjustment')) AS invoiced \
          FROM v_invoice_lines GROUP BY invoice_id, version) AS l \
         USING invoice_id, version",
    )
    .bind(since)
    .fetch_all()
    .await
}

/// Adjustment amounts per corrected invoice, on invoices (latest versions) matching `status`.
fn adjustments_sql(status: &str) -> String {
    format!(
        "SELECT adjusts_invoice_id AS k, toInt64(sum(amount_minor)) FROM v_invoice_lines \
         WHERE kind = 'adjustment' AND (invoice_id, version) IN \
               (SELECT invoice_id, version FROM v_invoices WHERE {status} AND period_end > toDateTime(?)) \
         GROUP BY k"
    )
}

async fn sums(
    db: &Client,
    sql: &str,
    since: i64,
) -> Result<BTreeMap<String, i64>, clickhouse::error::Error> {
    let mut q = db.query(sql);
    if sql.contains('?') {
        q = q.bind(since);
    }
    let rows: Vec<Sum> = q.fetch_all().await?;
    Ok(rows.into_iter().map(|r| (r.key, r.minor)).collect())
}
