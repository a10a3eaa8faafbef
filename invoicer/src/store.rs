//! Reading charges and existing invoices from ClickHouse, and appending invoices and their
//! lines. Invoices are versioned rows: a draft is rewritten by appending a higher version
//! with the same id; `v_invoices` and `v_invoice_lines` show the latest.

use std::collections::{BTreeMap, HashMap, HashSet};

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{Currency, CustomerId};
use tally_platform::store::charges::ChargeRow;
use tally_platform::store::{datetime_secs, dec9};
use tally_platform::usage::Reach;

use crate::invoice::{customer_currency, BadCharge, ChargeLine, Invoice, Status};
use crate::metrics;

/// The charge of a stored row; a row whose customer id or currency does not validate is left
/// out (logged and counted as an invoice not built, unless `quiet`), never failing the read
/// for the others.
fn charge_line(row: ChargeRow, quiet: bool) -> Option<ChargeLine> {
    match ChargeLine::try_from(row) {
        Ok(c) => Some(c),
        Err(_) if quiet => None,
        Err(e) => {
            let reason = match e {
                BadCharge::Customer { .. } => metrics::BuildFailure::Customer,
                BadCharge::Currency { .. } => metrics::BuildFailure::Currency,
            };
            tracing::error!(error = %e, "charge left out of this pass; retried next pass");
            metrics::invoice_failed(reason);
            None
        }
    }
}

/// The latest charges of every period ending after where its customer's read starts
/// ([`Reach::of`]: the lookback, or earlier for a customer with a correction of an older
/// period), read with one cursor in customer order and handed out a batch of whole customers
/// at a time: at most `max_customers` customers, and no more than `max_charges` charges unless
/// one customer has more (a customer's charges are never split). Only one batch is in memory.
/// A stored charge that does not validate is logged and counted
/// (`tally_invoicer_invoice_failures_total`), never failing the others.
pub struct ChargeBatches {
    cursor: clickhouse::query::RowCursor<ChargeRow>,
    reach: Reach,
    /// A bad row of a period ending after this (ms) is left out without being logged or
    /// counted: another read of the pass counts it ([`ChargeBatches::counted_until`]).
    counted_until_ms: i64,
    /// The first charge of the next batch, read while closing the previous one.
    next: Option<ChargeLine>,
    max_customers: usize,
    max_charges: usize,
}

impl ChargeBatches {
    /// Opens the cursor (sorted by `charges`' sorting key, so a customer's charges come
    /// together; the rows of `v_charges`, read from the table since ClickHouse 18.16 pushes no
    /// predicate into a view). Periods older than `reach.since_ms` are read only for the
    /// customers it widens (chosen by the server, so no id list goes into the query).
    pub fn open(
        db: &Client,
        reach: &Reach,
        max_customers: usize,
        max_charges: usize,
    ) -> Result<ChargeBatches, clickhouse::error::Error> {
        let secs = |ms: i64| ms.div_euclid(1000);
        let query = if reach.widened.is_empty() {
            db.query(
                "SELECT ?fields FROM charges FINAL WHERE period_end > toDateTime(?) \
                 ORDER BY customer, period_start, charge_id",
            )
            .bind(secs(reach.since_ms))
        } else {
            db.query(&format!(
                "SELECT ?fields FROM charges FINAL WHERE period_end > toDateTime(?) \
                 OR (period_end > toDateTime(?) AND {}) \
                 ORDER BY customer, period_start, charge_id",
                tally_platform::usage::WIDENED_CUSTOMERS_SQL
            ))
            .bind(secs(reach.since_ms))
            .bind(secs(reach.earliest()))
            .bind(reach.since_ms)
            .bind(reach.since_ms)
        };
        Ok(ChargeBatches {
            cursor: query.fetch::<ChargeRow>()?,
            reach: reach.clone(),
            counted_until_ms: i64::MAX,
            next: None,
            max_customers: max_customers.max(1),
            max_charges: max_charges.max(1),
        })
    }

    /// Logs and counts only the bad rows of periods ending at or before `ms` (the others are
    /// left out quietly): for a read that overlaps the pass's, so a bad row is counted once
    /// per pass.
    pub fn counted_until(mut self, ms: i64) -> ChargeBatches {
        self.counted_until_ms = ms;
        self
    }

    /// The charges of the next customers, in customer order; `None` once all were read.
    pub async fn next_batch(
        &mut self,
    ) -> Result<Option<Vec<ChargeLine>>, clickhouse::error::Error> {
        let mut batch: Vec<ChargeLine> = self.next.take().into_iter().collect();
        let mut customers = batch.len();
        while let Some(row) = self.cursor.next().await? {
            // a customer the server widened after `reach` was read: from the lookback only
            // (the next pass widens it)
            let from_ms = self.reach.of(&row.customer);
            if i64::from(row.period_end) * 1000 <= from_ms {
                continue;
            }
            let quiet = i64::from(row.period_end) * 1000 > self.counted_until_ms;
            let Some(c) = charge_line(row, quiet) else {
                continue;
            };
            let new_customer = batch.last().is_none_or(|l| l.customer != c.customer);
            if new_customer {
                if customers >= self.max_customers || batch.len() >= self.max_charges {
                    self.next = Some(c);
                    return Ok(Some(batch));
                }
                customers += 1;
            }
            batch.push(c);
        }
        Ok((!batch.is_empty()).then_some(batch))
    }
}

/// Ids of invoices already finalized (never to be rewritten).
pub async fn finalized_ids(db: &Client) -> Result<HashSet<String>, clickhouse::error::Error> {
    let ids: Vec<String> = db
        .query("SELECT invoice_id FROM v_invoices WHERE status = 'finalized'")
        .fetch_all()
        .await?;
    Ok(ids.into_iter().collect())
}

#[derive(clickhouse::Row, Serialize)]
struct InvoiceRow<'a> {
    invoice_id: &'a str,
    customer: &'a str,
    period_start: u32,
    period_end: u32,
    status: &'a str,
    currency: &'a str,
    subtotal_minor: i64,
    total_minor: i64,
    line_count: u32,
    plan_id: &'a str,
    plan_version: u32,
    issued_at: u32,
    document: String,
    version: u64,
    number: &'a str,
    issuer: &'a str,
    discount_minor: i64,
    tax_minor: i64,
    credits_applied_minor: i64,
    amount_due_minor: i64,
    due_at: u32,
    payment_terms_days: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct LineRow<'a> {
    invoice_id: &'a str,
    line_no: u32,
    charge_id: &'a str,
    meter: &'a str,
    group_key: &'a str,
    description: &'a str,
    #[serde(with = "dec9")]
    quantity: Decimal,
    price_model: &'a str,
    unit_price: &'a str,
    tiers: String,
    amount_minor: i64,
    currency: &'a str,
    plan_id: &'a str,
    plan_version: u32,
    version: u64,
    kind: &'a str,
    group_names: &'a [String],
    group_values: &'a [String],
    amount_before_discounts_minor: i64,
    discount_minor: i64,
    tax_rate: &'a str,
    tax_minor: i64,
    adjusts_invoice_id: &'a str,
}

/// Rows of finalized invoices rank above every draft row, whatever the clocks of the instances
/// that wrote them: a lagging instance's late draft never hides a finalized invoice.
const FINALIZED_VERSION_BASE: u64 = 1 << 62;

/// The stored row version of an invoice: `issued_at_ms`, plus [`FINALIZED_VERSION_BASE`] once
/// finalized (a finalized invoice rewritten from its frozen document gives identical rows).
pub fn row_version(inv: &Invoice) -> u64 {
    let at = u64::try_from(inv.issued_at_ms).unwrap_or(0);
    match inv.status {
        Status::Draft => at,
        Status::Finalized => FINALIZED_VERSION_BASE + at,
    }
}

/// Appends the invoices (lines first, then headers), each as version [`row_version`].
pub async fn write(db: &Client, invoices: &[Invoice]) -> Result<(), clickhouse::error::Error> {
    if invoices.is_empty() {
        return Ok(());
    }
    let mut lines = db.insert::<LineRow<'_>>("invoice_lines").await?;
    for inv in invoices {
        let version = row_version(inv);
        for l in &inv.lines {
            lines
                .write(&LineRow {
                    invoice_id: &inv.invoice_id,
                    line_no: l.line_no,
                    charge_id: &l.charge_id,
                    meter: &l.meter,
                    group_key: &l.group_key,
                    description: &l.description,
                    quantity: l.quantity,
                    price_model: &l.price_model,
                    unit_price: &l.unit_price,
                    tiers: l.tiers.to_string(),
                    amount_minor: l.amount_minor,
                    currency: inv.currency.code(),
                    plan_id: &l.plan_id,
                    plan_version: l.plan_version,
                    version,
                    kind: l.kind.as_str(),
                    group_names: &l.group_names,
                    group_values: &l.group_values,
                    amount_before_discounts_minor: l.amount_before_discounts_minor,
                    discount_minor: l.discount_minor,
                    tax_rate: &l.tax_rate,
                    tax_minor: l.tax_minor,
                    adjusts_invoice_id: l.adjusts_invoice_id.as_deref().unwrap_or_default(),
                })
                .await?;
        }
    }
    lines.end().await?;
    let mut headers = db.insert::<InvoiceRow<'_>>("invoices").await?;
    for inv in invoices {
        let version = row_version(inv);
        headers
            .write(&InvoiceRow {
                invoice_id: &inv.invoice_id,
                customer: inv.customer.as_str(),
                period_start: datetime_secs(inv.period.start_ms),
                period_end: datetime_secs(inv.period.end_ms),
                status: inv.status.as_str(),
                currency: inv.currency.code(),
                subtotal_minor: inv.subtotal_minor,
                total_minor: inv.total_minor,
                line_count: inv.lines.len() as u32,
                plan_id: &inv.plan_id,
                plan_version: inv.plan_version,
                issued_at: datetime_secs(inv.issued_at_ms),
                document: serde_json::to_string(inv).unwrap_or_default(),
                version,
                number: inv.number.as_deref().unwrap_or_default(),
                issuer: &inv.issuer.id,
                discount_minor: inv.discount_minor,
                tax_minor: inv.tax_minor,
                credits_applied_minor: inv.credits_applied_minor,
                amount_due_minor: inv.amount_due_minor,
                due_at: datetime_secs(inv.due_at_ms),
                payment_terms_days: inv.payment_terms_days,
            })
            .await?;
    }
    headers.end().await
}

#[derive(clickhouse::Row, Deserialize)]
struct BalanceRow {
    customer: String,
    currency: String,
    minor: i64,
}

/// The invoicer's prepaid credit left per (customer, currency) of `customers`: their grants
/// minus what finalized invoices (not voided) applied of them, that is their credit beyond
/// what the payments wallet had reserved for them (`reserved`, see [`wallet_credit`]).
pub async fn credit_balances(
    db: &Client,
    customers: &[CustomerId],
    reserved: &WalletCredit,
    applied: &AppliedCredit,
) -> Result<HashMap<(CustomerId, Currency), i64>, clickhouse::error::Error> {
    let facts = CreditFacts::load(db, customers, applied).await?;
    Ok(facts.balances(customers, reserved))
}

/// The credit finalized (not voided) invoices applied of the invoicer's grants, per customer
/// with a grant: read once per pass ([`AppliedCredit::load`]). Each customer is in one batch
/// of a pass, so what a batch finalizes never changes what a later batch reads here.
#[derive(Debug, Default)]
pub struct AppliedCredit {
    by_customer: HashMap<CustomerId, Vec<(Currency, String, i64)>>,
}

impl AppliedCredit {
    /// One read per pass, none when no customer has a grant: `invoices` has no customer key
    /// (and ClickHouse 18.16 pushes no predicate into `v_invoices`), so each read of applied
    /// credit scans the invoices; a read per batch would scan them once per batch.
    pub async fn load(db: &Client) -> Result<AppliedCredit, clickhouse::error::Error> {
        let mut out = AppliedCredit::default();
        let holders: u64 = db
            .query("SELECT count() FROM (SELECT customer FROM credit_grants LIMIT 1)")
            .fetch_one()
            .await?;
        if holders == 0 {
            return Ok(out);
        }
        let rows: Vec<AppliedRow> = db
            .query(
                "SELECT customer, currency, invoice_id, credits_applied_minor FROM v_invoices \
                 WHERE customer IN (SELECT customer FROM credit_grants) \
                 AND status NOT IN ('draft', 'void') AND credits_applied_minor != 0",
            )
            .fetch_all()
            .await?;
        for r in rows {
            if let Some((customer, currency)) =
                customer_currency("invoices", r.customer, &r.currency)
            {
                out.by_customer.entry(customer).or_default().push((
                    currency,
                    r.invoice_id,
                    r.minor,
                ));
            }
        }
        Ok(out)
    }
}

/// The facts behind [`credit_balances`], read per batch of a pass for the batch's customers
/// only: the invoicer's grants and the credit finalized invoices applied, per customer.
#[derive(Debug, Default)]
pub struct CreditFacts {
    /// customer -> (currency, granted minor) and (currency, invoice id, applied minor)
    by_customer: HashMap<CustomerId, CustomerCredit>,
}

#[derive(Debug, Default)]
struct CustomerCredit {
    granted: Vec<(Currency, i64)>,
    applied: Vec<(Currency, String, i64)>,
}

/// `(?, ?, ...)`: one placeholder per value (ClickHouse 18.16 takes no array after `IN`).
pub(crate) fn placeholders(n: usize) -> String {
    format!("({})", vec!["?"; n.max(1)].join(", "))
}

impl CreditFacts {
    /// Reads the grants of `customers` (by `credit_grants`' sorting key, [`IDS_PER_QUERY`]
    /// ids per query), and takes the credit applied by finalized (not voided) invoices of
    /// those of them that have a grant from the pass's `applied` (a customer without a grant
    /// has no invoicer credit left to reduce).
    pub async fn load(
        db: &Client,
        customers: &[CustomerId],
        applied: &AppliedCredit,
    ) -> Result<CreditFacts, clickhouse::error::Error> {
        let mut out = CreditFacts::default();
        for chunk in customers.chunks(IDS_PER_QUERY) {
            let sql = format!(
                "SELECT customer, currency, toInt64(sum(amount_minor)) AS granted \
                 FROM credit_grants FINAL WHERE customer IN {} GROUP BY customer, currency",
                placeholders(chunk.len())
            );
            let mut query = db.query(&sql);
            for c in chunk {
                query = query.bind(c.as_str());
            }
            let granted: Vec<BalanceRow> = query.fetch_all().await?;
            for r in granted {
                if let Some((customer, currency)) =
                    customer_currency("credit_grants", r.customer, &r.currency)
                {
                    out.by_customer
                        .entry(customer)
                        .or_default()
                        .granted
                        .push((currency, r.minor));
                }
            }
        }
        for (customer, credit) in &mut out.by_customer {
            if let Some(rows) = applied.by_customer.get(customer) {
                credit.applied.extend(rows.iter().cloned());
            }
        }
        Ok(out)
    }

    /// The credit left per (customer, currency) of `customers` (those with no grant and no
    /// credit applied are left out), given the wallet's reservations per (invoice, currency).
    pub fn balances<'a>(
        &self,
        customers: impl IntoIterator<Item = &'a CustomerId>,
        wallet: &WalletCredit,
    ) -> HashMap<(CustomerId, Currency), i64> {
        let mut out: HashMap<(CustomerId, Currency), i64> = HashMap::new();
        for customer in customers {
            let Some(c) = self.by_customer.get(customer) else {
                continue;
            };
            for (currency, minor) in &c.granted {
                *out.entry((customer.clone(), *currency)).or_default() += minor;
            }
            for (currency, invoice_id, minor) in &c.applied {
                let wallet = wallet
                    .reserved_for(invoice_id, *currency)
                    .min((*minor).max(0));
                *out.entry((customer.clone(), *currency)).or_default() -= minor - wallet;
            }
        }
        out
    }
}

#[derive(clickhouse::Row, Deserialize)]
struct WalletRow {
    customer: String,
    invoice_id: String,
    currency: String,
    reserved_minor: i64,
    balance_minor: i64,
}

/// The payments wallet (`wallet_movements`, migration 0051) of some customers: what it
/// reserved for each invoice's period (usage consumed, minus what was released or restored),
/// and its balance per (customer, currency). Read per customer (the table's first sorting
/// column), the earliest record of each movement id.
#[derive(Debug, Default, Clone)]
pub struct WalletCredit {
    /// invoice id -> currency -> reserved minor units: an invoice is in one currency, so a
    /// reservation is credited only to the invoice of its own currency (see
    /// [`WalletCredit::reserved_for`]).
    pub reserved: BTreeMap<String, BTreeMap<Currency, i64>>,
    pub balance: HashMap<(CustomerId, Currency), i64>,
}

impl WalletCredit {
    /// What the wallet reserved for `invoice_id` in `currency`, never below zero.
    pub fn reserved_for(&self, invoice_id: &str, currency: Currency) -> i64 {
        self.reserved
            .get(invoice_id)
            .and_then(|r| r.get(&currency))
            .copied()
            .unwrap_or(0)
            .max(0)
    }

    /// The wallet's non-zero reservations for `invoice_id` in another currency than
    /// `currency` (never credited to it).
    pub fn reserved_in_other_currencies(
        &self,
        invoice_id: &str,
        currency: Currency,
    ) -> Vec<(Currency, i64)> {
        self.reserved
            .get(invoice_id)
            .into_iter()
            .flatten()
            .filter(|(c, r)| **c != currency && **r != 0)
            .map(|(c, r)| (*c, *r))
            .collect()
    }
}

pub async fn wallet_credit(
    db: &Client,
    customers: &[CustomerId],
) -> Result<WalletCredit, clickhouse::error::Error> {
    let mut out = WalletCredit::default();
    // ids inline in the query text: a bounded list per query keeps it under ClickHouse's
    // max_query_size (256 KiB) whatever the number of customers
    for chunk in customers.chunks(IDS_PER_QUERY) {
        let sql = format!(
            "SELECT c, i, cur, \
                 toInt64(sumIf(amt, k IN ('consume')) - sumIf(amt, k IN ('release', 'restore'))) AS r, \
                 toInt64(sumIf(amt, k IN ('grant', 'release', 'restore')) \
                     - sumIf(amt, k IN ('consume', 'expire', 'void'))) AS b \
                 FROM (SELECT movement_id, any(customer) AS c, argMin(invoice_id, at_ms) AS i, \
                       argMin(currency, at_ms) AS cur, argMin(kind, at_ms) AS k, \
                       argMin(amount_minor, at_ms) AS amt \
                       FROM wallet_movements WHERE customer IN ({}) GROUP BY movement_id) \
                 GROUP BY c, i, cur",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut query = db.query(&sql);
        for c in chunk {
            query = query.bind(c.as_str());
        }
        let rows: Vec<WalletRow> = query.fetch_all().await?;
        for r in rows {
            let Some((customer, currency)) =
                customer_currency("wallet_movements", r.customer, &r.currency)
            else {
                continue;
            };
            if !r.invoice_id.is_empty() {
                *out.reserved
                    .entry(r.invoice_id)
                    .or_default()
                    .entry(currency)
                    .or_default() += r.reserved_minor;
            }
            *out.balance.entry((customer, currency)).or_default() += r.balance_minor;
        }
    }
    Ok(out)
}

/// Ids bound into one query's `IN (...)` list at most: 1,000 customer ids of at most 64
/// characters stay far under ClickHouse's default `max_query_size` (256 KiB).
pub const IDS_PER_QUERY: usize = 1_000;

#[derive(clickhouse::Row, Deserialize)]
struct AppliedRow {
    customer: String,
    currency: String,
    invoice_id: String,
    minor: i64,
}

#[derive(clickhouse::Row, Serialize)]
struct GrantRow<'a> {
    grant_id: &'a str,
    customer: &'a str,
    currency: &'a str,
    amount_minor: i64,
    reason: &'a str,
    granted_at_ms: i64,
    granted_at: u32,
}

/// Records a prepaid credit grant (idempotent per `grant_id`).
pub async fn grant_credit(
    db: &Client,
    grant_id: &str,
    customer: &str,
    currency: &str,
    amount_minor: i64,
    reason: &str,
    at_ms: i64,
) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<GrantRow<'_>>("credit_grants").await?;
    insert
        .write(&GrantRow {
            grant_id,
            customer,
            currency,
            amount_minor,
            reason,
            granted_at_ms: at_ms,
            granted_at: datetime_secs(at_ms),
        })
        .await?;
    insert.end().await
}

#[cfg(test)]
mod wallet_credit_tests {
    use tally_domain::Currency;

    use super::WalletCredit;

    fn cur(code: &str) -> Currency {
        code.parse().unwrap()
    }

    fn reserve(w: &mut WalletCredit, invoice: &str, code: &str, minor: i64) {
        w.reserved
            .entry(invoice.to_owned())
            .or_default()
            .insert(cur(code), minor);
    }

    #[test]
    fn a_reservation_counts_only_for_its_own_currency() {
        let mut w = WalletCredit::default();
        reserve(&mut w, "inv_a", "EUR", 300);
        reserve(&mut w, "inv_a", "USD", 600);
        reserve(&mut w, "inv_b", "USD", 50);
        reserve(&mut w, "inv_a", "GBP", 0);
        assert_eq!(w.reserved_for("inv_a", cur("EUR")), 300);
        assert_eq!(w.reserved_for("inv_a", cur("JPY")), 0);
        assert_eq!(
            w.reserved_in_other_currencies("inv_a", cur("EUR")),
            vec![(cur("USD"), 600)]
        );
        assert!(w
            .reserved_in_other_currencies("inv_b", cur("USD"))
            .is_empty());
        reserve(&mut w, "inv_c", "USD", -5);
        assert_eq!(w.reserved_for("inv_c", cur("USD")), 0, "never below zero");
    }
}
