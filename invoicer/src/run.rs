//! One invoicing pass, and the schedule that repeats it.
//!
//! A pass reads the latest charges of every period that ended less than `lookback_secs` ago
//! (or is still open, or holds an event corrected or imported within `lookback_secs`:
//! `tally_platform::usage::reach`), groups them per (customer, period) and builds each invoice. Drafts
//! (period open or in its grace period) are appended as new versions. Invoices whose period
//! ended and whose grace passed are finalized exactly once: numbered and frozen in NATS KV
//! ([`crate::numbering`]; a racing or later finalizer gets the first document back), written,
//! then their `draft → finalized` transition appended (actor `invoicer`). An invoice whose
//! finalization is recorded is never rebuilt. Late usage of a finalized period becomes an
//! adjustment line on the customer's next invoice ([`crate::late`]). A period whose charges
//! are in several currencies gets one invoice per currency ([`crate::currency_split`]). One
//! invoice that cannot be built (an unknown currency, an overflowing total) or frozen (its
//! document refused by NATS KV) is logged, counted in `tally_invoicer_invoice_failures_total`
//! and retried next pass; the others are built and finalized.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use clickhouse::Client;
use tally_platform::shutdown::Shutdown;

use crate::config::InvoicerConfig;
use crate::invoice::{build_as, BuildError, ChargeLine, Invoice, Status, Terms};
use crate::lifecycle::{self, LifecycleError};
use crate::numbering::{self, NumberingError, Numbers};
use crate::{currency_split, late, metrics, store};

/// The actor of the invoicer's own lifecycle records.
pub const ACTOR: &str = "invoicer";

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Numbering(#[from] NumberingError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("{count} invoices are due for finalization but no numbering bucket is configured")]
    NoNumbering { count: usize },
}

/// Builds and stores every draft due at `now_ms`, without finalizing (no numbering): for
/// callers that only look at open periods. See [`invoice_pass`].
pub async fn invoice_once(
    db: &Client,
    cfg: &InvoicerConfig,
    now_ms: i64,
) -> Result<Vec<Invoice>, InvoiceError> {
    invoice_pass(db, None, cfg, now_ms).await
}

/// Builds, finalizes and stores every invoice due at `now_ms`; returns them (drafts and the
/// frozen documents of invoices finalized by this pass), sorted by customer and period.
pub async fn invoice_pass(
    db: &Client,
    numbers: Option<&Numbers>,
    cfg: &InvoicerConfig,
    now_ms: i64,
) -> Result<Vec<Invoice>, InvoiceError> {
    let started = Instant::now();
    let lookback_ms = ms(cfg.lookback_secs);
    let grace_ms = ms(cfg.grace_secs);
    // a period corrected or backfilled within the lookback is invoiced however old (one that
    // was finalized is in `done`: its late usage is `late`'s)
    let since_ms = tally_platform::usage::reach(db, now_ms - lookback_ms).await?;
    let charges = store::charges_since(db, since_ms).await?;
    // one invoice per (customer, period, currency): a period with several currencies keeps
    // its id for its home currency, the others get their own (`currency_split`)
    let ids = currency_split::resolve(db, &charges).await?;
    let mut groups: BTreeMap<(String, i64, String), Vec<ChargeLine>> = BTreeMap::new();
    for c in charges {
        groups
            .entry((c.customer.clone(), c.period.start_ms, c.currency.clone()))
            .or_default()
            .push(c);
    }
    // invoices finalized since the earliest period of the pass started: a longer period's
    // charge (a year's fee) read after its invoice (the first month's) was finalized finds it
    // there (its changes are `late`'s)
    let earliest_start = groups.keys().map(|k| k.1).min().unwrap_or(since_ms);
    let done = lifecycle::finalized_since(db, earliest_start.min(since_ms - grace_ms)).await?;
    let customers: Vec<String> = groups
        .keys()
        .map(|(c, _, _)| c.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // prepaid credit, one path: what the payments wallet reserved for the period's usage
    // (consumed in near real time, in its order of grants) plus what is left of the
    // invoicer's own grants (`POST /v1/credits`)
    let wallet = store::wallet_credit(db, &customers).await?;
    let mut credits = store::credit_balances(db, &wallet.reserved).await?;
    let mut adjustments = if cfg.features.late_usage_adjustments {
        late::pending(db, cfg, now_ms).await?
    } else {
        Vec::new()
    };
    let mut drafts = Vec::new();
    let mut due = Vec::new();
    for ((customer, start_ms, currency), group) in &groups {
        let invoice_id = ids.id(customer, *start_ms, currency);
        if done.contains(&invoice_id) {
            continue;
        }
        let key = (customer.clone(), currency.clone());
        let legacy = credits.get(&key).copied().unwrap_or(0).max(0);
        // only the wallet's reservation in the invoice's own currency is credited to it
        let reserved = wallet.reserved_for(&invoice_id, currency);
        for (other, minor) in wallet.reserved_in_other_currencies(&invoice_id, currency) {
            tracing::warn!(%customer, %invoice_id, %currency, reserved_currency = %other, reserved_minor = minor, "wallet reservation in another currency than the invoice's: not credited to it");
        }
        let terms = Terms {
            grace_ms,
            payment_terms_days: cfg.payment_terms_days,
            issuer: cfg.issuer.clone(),
            credit_available_minor: reserved.saturating_add(legacy),
        };
        let period = crate::invoice::invoice_period(group).unwrap_or(group[0].period);
        let adj = late::take_for(&mut adjustments, customer, currency, period);
        // one customer's invoice that cannot be built never stops the others'
        let mut invoice = match build_as(invoice_id.clone(), group, adj, &terms, now_ms) {
            Ok(invoice) => invoice,
            Err(e) => {
                tracing::error!(%customer, period_start_ms = start_ms, error = %e, "invoice not built this pass; retried next pass");
                metrics::invoice_failed(failure(&e));
                continue;
            }
        };
        // the wallet's part of the credit applied comes first; the rest is the invoicer's
        let from_legacy =
            invoice.credits_applied_minor - invoice.credits_applied_minor.min(reserved);
        let wallet_left = wallet.balance.get(&key).copied();
        if wallet_left.is_some() || credits.contains_key(&key) {
            invoice.credit_balance_minor = Some(
                wallet_left
                    .unwrap_or(0)
                    .saturating_add(legacy - from_legacy),
            );
        }
        match invoice.status {
            Status::Draft => drafts.push(invoice),
            Status::Finalized => {
                if let Some(c) = credits.get_mut(&key) {
                    *c -= from_legacy;
                }
                due.push(invoice);
            }
        }
    }
    let finalized = finalize(numbers, cfg, due).await?;
    let finalized: Vec<Invoice> = finalized
        .into_iter()
        .filter_map(|r| match r {
            Ok(inv) => Some(inv),
            Err((id, customer, e)) => {
                // numbered but not frozen: the next pass gets the same number back and
                // freezes it; the others are finalized now
                tracing::error!(%customer, invoice_id = %id, error = %e, "invoice not finalized this pass; retried next pass");
                metrics::invoice_failed(metrics::BuildFailure::Finalize);
                None
            }
        })
        .collect();
    let ids: Vec<String> = finalized.iter().map(|i| i.invoice_id.clone()).collect();
    let mut all = drafts;
    all.extend(finalized);
    // one insert per table for the whole pass
    store::write(db, &all).await?;
    lifecycle::record_finalized(db, &ids, ACTOR, "period ended and grace passed", now_ms).await?;
    metrics::pass(started.elapsed(), all.len());
    metrics::finalized(ids.len());
    all.sort_by(|a, b| (&a.customer, a.period.start_ms).cmp(&(&b.customer, b.period.start_ms)));
    Ok(all)
}

fn failure(e: &BuildError) -> metrics::BuildFailure {
    match e {
        BuildError::MixedCurrencies { .. } => metrics::BuildFailure::MixedCurrencies,
        BuildError::Currency { .. } => metrics::BuildFailure::Currency,
        BuildError::Overflow { .. } => metrics::BuildFailure::Overflow,
        BuildError::Empty { .. } => metrics::BuildFailure::Empty,
    }
}

/// One invoice that could not be frozen: its id, customer and why.
type NotFrozen = (String, String, NumberingError);

/// Numbers (in period-end, customer order) and freezes the invoices due for finalization;
/// an invoice whose document cannot be frozen is returned as an error of its own (the
/// others are finalized). Numbering itself (one counter per issuer) fails the pass.
async fn finalize(
    numbers: Option<&Numbers>,
    cfg: &InvoicerConfig,
    mut due: Vec<Invoice>,
) -> Result<Vec<Result<Invoice, NotFrozen>>, InvoiceError> {
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let Some(numbers) = numbers else {
        return Err(InvoiceError::NoNumbering { count: due.len() });
    };
    due.sort_by(|a, b| {
        (a.period.end_ms, &a.customer, &a.currency).cmp(&(
            b.period.end_ms,
            &b.customer,
            &b.currency,
        ))
    });
    let ids: Vec<String> = due.iter().map(|i| i.invoice_id.clone()).collect();
    let assigned: HashMap<String, u64> = numbers.assign(&cfg.issuer.id, &ids).await?;
    for inv in &mut due {
        inv.number = assigned
            .get(&inv.invoice_id)
            .map(|n| numbering::format(&cfg.number_prefix, *n));
    }
    Ok(numbers.freeze_each(due).await)
}

fn ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
}

/// Invoices on every tick of the schedule until shutdown, then reconciles; a failed pass is
/// logged and retried at the next tick.
pub async fn run(
    db: Client,
    numbers: Numbers,
    cfg: InvoicerConfig,
    shutdown: Shutdown,
    now_ms: fn() -> i64,
) {
    loop {
        let wait = cfg.schedule.until_next(now_ms());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = now_ms();
        match invoice_pass(&db, Some(&numbers), &cfg, now).await {
            Ok(invoices) => tracing::info!(invoices = invoices.len(), "invoicing pass done"),
            Err(e) => {
                metrics::pass_failed();
                tracing::warn!(error = %e, "invoicing pass failed");
            }
        }
        // keeps tally_invoicer_reconciliation_difference_minor current for the periods a
        // pass can still touch
        let since = now - ms(cfg.adjustment_lookback_secs.max(cfg.lookback_secs));
        match crate::reconcile::run(&db, since).await {
            Ok(r) if r.difference_minor != 0 => tracing::warn!(
                difference_minor = r.difference_minor,
                invoices = r.money_differences.len(),
                "reconciliation found unexplained differences"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
        }
    }
}
