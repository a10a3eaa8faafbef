//! One rating pass, and the schedule that repeats it.
//!
//! A pass reads committed usage for every billing period overlapping
//! `[now - lookback, now]`, prices each (customer, period, meter) with the plan version
//! effective at the period start, and appends the charges. A customer with a correction
//! recorded within the lookback for an older event (`tally_platform::usage::reach`) is also
//! read and priced back to the periods of its earliest corrected event; the other customers'
//! older usage is never read again. Flat fees and minimums are owed
//! without usage too: every part of a period that a subscription covers in the range and that
//! has no usage of such a price's meter is priced at zero usage
//! ([`crate::rating::recurring`]), from the catalog, never by reading more usage. A
//! subscription that ends for good inside a period (cancelled, or its `ends_at`) has that
//! period's charges cut at the end (`final_period`), so its final invoice is due then. Fees
//! billed in advance (`billing = "in_advance"`) are priced from the catalog for each part of a
//! period that has begun ([`recurring::advance_usages`]) and carried by the invoice finalized
//! at the part's start; usage of their meter never bills them again. Passes are idempotent:
//! the same usage and catalog give the same charge ids and amounts. A customer quarantined by
//! the stored catalog (its records conflict, [`crate::catalog::conflicts`]) has no
//! subscription and no default plan in it, so nothing of it is priced; it is logged and
//! counted at every pass.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tally_domain::{CustomerId, Period};
use tally_platform::shutdown::{Shutdown, Ticker};

use crate::catalog::{Catalog, Conflict, Outcome};
use crate::config::RaterConfig;
use crate::metrics;
use crate::rating::charge::{compute_with, Charge, MeterUsage};
use crate::rating::recurring;
use crate::rating::usage;
use crate::store::charges as store;
use crate::store::CatalogSource;

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RateError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct RateReport {
    pub charges: Vec<Charge>,
    pub usage_rows: usize,
    pub skipped: usage::Skipped,
    /// (customer, meter) pairs with usage but no price in the plan (or, for a fee owed
    /// without usage, no FX rate yet).
    pub unpriced_meters: u64,
    /// Charges of flat fees and minimums in periods (or parts) without usage of their meter.
    pub idle_charges: usize,
    /// Charges of fees billed in advance (one per part of a period that has begun).
    pub advance_charges: usize,
    /// Customers left out of this pass and why (logged and counted; retried next pass).
    pub failed: BTreeMap<String, usage::FailReason>,
    /// The catalog's conflicting stored records: the ones set aside and the customers
    /// quarantined (left out of this pass, like `failed`; [`crate::catalog::conflicts`]).
    pub conflicts: Vec<Conflict>,
}

const MONTH_MS: i64 = 31 * 86_400_000;

/// Rates every period overlapping `[now - lookback, now]` and writes the charges. A
/// customer whose usage or pricing fails is left out (logged, counted in
/// `tally_rater_customer_failures_total`, retried next pass); every other customer is rated.
pub async fn rate_once(
    db: &Client,
    catalog: &Catalog,
    cfg: &RaterConfig,
    now_ms: i64,
) -> Result<RateReport, RateError> {
    let started = Instant::now();
    let lookback_ms = i64::try_from(cfg.lookback_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    // a period with an event corrected or imported within the lookback is re-rated however
    // old (docs/INGEST.md "Backfill"), for that customer only: every customer is read and
    // priced from the lookback's start, a corrected customer also from its earliest
    // corrected event on
    let reach = tally_platform::usage::reach(db, now_ms - lookback_ms).await?;
    // every period ending after a horizon is folded whole (a quarter or a year late in it)
    let read_from_ms =
        |horizon_ms: i64| catalog.periods_reach(horizon_ms).min(horizon_ms - MONTH_MS);
    let widened: Vec<(String, i64)> = reach
        .widened
        .iter()
        .map(|(c, &h)| (c.clone(), read_from_ms(h)))
        .collect();
    let (folded, rows) = usage::read_and_fold_widened(
        db,
        catalog,
        read_from_ms(reach.since_ms),
        now_ms + 86_400_000,
        &widened,
    )
    .await?;
    let horizon_of = |c: &CustomerId| reach.of(c.as_ref());
    let mut report = RateReport {
        usage_rows: rows,
        skipped: folded.skipped,
        failed: folded.failed,
        ..Default::default()
    };
    // flat fees and minimums of the parts of periods without usage of their meter
    let idle = recurring::idle_usages_by(catalog, &folded.usages, horizon_of, now_ms);
    // fees billed in advance, each with the period of the invoice that carries it
    let advance = recurring::advance_usages_by(catalog, horizon_of, now_ms);
    let priced = folded.usages.values().chain(idle.iter()).map(|u| (u, None));
    let advanced = advance.iter().map(|a| (&a.usage, Some(a.invoice_period)));
    report.charges = price_usages(catalog, priced.chain(advanced), horizon_of, &mut report);
    for (customer, reason) in &report.failed {
        tracing::error!(%customer, reason = reason.code(), "customer not rated this pass; retried next pass");
        metrics::customer_failed(reason.code());
    }
    report.conflicts = report_conflicts(catalog);
    store::write(db, &report.charges, now_ms).await?;
    metrics::unpriced("no_subscription", report.skipped.no_subscription);
    metrics::unpriced("no_price", report.unpriced_meters);
    metrics::pass(started.elapsed(), report.charges.len());
    Ok(report)
}

/// Logs and counts the catalog's conflicting stored records: a quarantined customer as a
/// customer left out of the pass (`reason = catalog_conflict`), every conflict in
/// `tally_rater_catalog_conflicts` (docs/OPERATIONS.md, "Conflicting catalog records").
fn report_conflicts(catalog: &Catalog) -> Vec<Conflict> {
    let conflicts = catalog.conflicts().to_vec();
    for c in &conflicts {
        match c.outcome {
            Outcome::Quarantined => {
                tracing::error!(
                    customer = %c.identity,
                    reason = "catalog_conflict",
                    detail = %c.detail,
                    "customer not rated this pass: its stored catalog records conflict; retried next pass"
                );
                metrics::customer_failed("catalog_conflict");
            }
            Outcome::SetAside => tracing::warn!(
                kind = c.kind.code(),
                record = %c.identity,
                detail = %c.detail,
                "stored catalog record set aside (ignored): it conflicts with one recorded before it"
            ),
        }
    }
    metrics::catalog_conflicts(&conflicts);
    conflicts
}

/// Prices each usage (with the invoice period of a fee billed in advance) of a period ending
/// after its customer's horizon (`horizon_of`), counting what is unpriced, idle or in advance in `report`; a customer
/// whose pricing overflows is recorded in `report.failed` and gets no charge at all.
fn price_usages<'u>(
    catalog: &Catalog,
    usages: impl Iterator<Item = (&'u MeterUsage, Option<Period>)>,
    horizon_of: impl Fn(&CustomerId) -> i64,
    report: &mut RateReport,
) -> Vec<Charge> {
    let mut charges: BTreeMap<&str, Vec<Charge>> = BTreeMap::new();
    for (u, invoice_period) in usages {
        let (customer, period, segment_from_ms) = (&u.customer, &u.period, u.segment_from_ms);
        if period.end_ms <= horizon_of(customer) || report.failed.contains_key(customer.as_ref()) {
            continue;
        }
        let sub = catalog
            .subscription_for(customer, &u.meter, segment_from_ms)
            .expect("fold keeps only customers with a subscription");
        let Some(plan) = catalog.plan_of(&sub, segment_from_ms) else {
            report.unpriced_meters += 1;
            continue;
        };
        // usage of an in-advance fee's meter: the fee is billed by its advance charge
        let by_record = matches!(sub, std::borrow::Cow::Borrowed(_));
        if invoice_period.is_none()
            && by_record
            && plan.prices.get(&u.meter).is_some_and(|p| p.in_advance())
        {
            continue;
        }
        let terms = catalog.terms(&sub, plan, period, &u.meter);
        match compute_with(u, plan, &terms) {
            Ok(Some(mut charge)) => {
                match invoice_period {
                    Some(p) => {
                        charge.period = p;
                        report.advance_charges += 1;
                    }
                    None => {
                        charge.period =
                            final_period(charge.period, catalog.final_end(customer, &sub.line));
                        report.idle_charges += usize::from(u.windows == 0);
                    }
                }
                charges.entry(customer.as_ref()).or_default().push(charge);
            }
            Ok(None) => report.unpriced_meters += 1,
            Err(e) => {
                tracing::error!(%customer, error = %e, "customer left out of this rating pass");
                report
                    .failed
                    .insert(customer.to_string(), usage::FailReason::ChargeOverflow);
            }
        }
    }
    // a customer with one failed charge gets none this pass: never a partial set
    charges
        .into_iter()
        .filter(|(c, _)| !report.failed.contains_key(*c))
        .flat_map(|(_, v)| v)
        .collect()
}

/// The period a charge is invoiced for: its billing period, or, when the subscription ends
/// for good inside it (`final_end`), the period cut at that end, so the final invoice is
/// finalized from the end on rather than at the period's natural end. The charge id and the
/// proration (by the full period) do not change.
fn final_period(period: Period, final_end: Option<i64>) -> Period {
    match final_end {
        Some(end) if period.start_ms < end && end < period.end_ms => Period {
            start_ms: period.start_ms,
            end_ms: end,
        },
        _ => period,
    }
}

/// Rates every `interval_secs` until shutdown, with the catalog as stored at each pass (so
/// plan versions added through the API apply without a restart; if the stored catalog cannot
/// be read, the last one is kept); a failed pass is logged and retried next time.
pub async fn run(
    db: Client,
    mut catalog: Catalog,
    source: CatalogSource,
    cfg: RaterConfig,
    shutdown: Shutdown,
    now_ms: fn() -> i64,
) {
    metrics::init();
    let mut ticker = Ticker::new(Duration::from_secs(cfg.interval_secs), shutdown);
    while ticker.next().await {
        match source.current(&db).await {
            Ok(c) => catalog = c,
            Err(e) => tracing::warn!(error = %e, "keeping the last catalog"),
        }
        match rate_once(&db, &catalog, &cfg, now_ms()).await {
            Ok(r) => tracing::info!(
                charges = r.charges.len(),
                idle_charges = r.idle_charges,
                advance_charges = r.advance_charges,
                usage_rows = r.usage_rows,
                "rating pass done"
            ),
            Err(e) => {
                metrics::pass_failed();
                tracing::warn!(error = %e, "rating pass failed");
            }
        }
    }
}
