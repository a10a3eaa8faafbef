//! One invoicing pass, and the schedule that repeats it.
//!
//! A pass reads the latest charges of every period that ended less than `lookback_secs` ago
//! (or is still open, or holds an event of its customer corrected or imported within
//! `lookback_secs`: `tally_platform::usage::reach`), groups them per (customer, period) and
//! builds each invoice. Drafts (period open or in its grace period) are appended as new
//! versions. Invoices whose period
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
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tally_domain::{Currency, CustomerId};
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

/// Customers per batch of a pass: their charges and invoices are the pass's memory whatever
/// the number of customers, and each id list a batch binds into a query stays under
/// ClickHouse's `max_query_size` ([`store::IDS_PER_QUERY`] per query).
pub const BATCH_CUSTOMERS: usize = 2_000;
/// Charges per batch, unless one customer has more (its charges are never split).
pub const BATCH_CHARGES: usize = 50_000;

/// What a pass did, and where its time went.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PassReport {
    /// Invoices written (drafts and invoices finalized by the pass).
    pub invoices: usize,
    /// Invoices finalized by the pass.
    pub finalized: usize,
    /// Batches of customers.
    pub batches: usize,
    /// The caller stopped the pass between two batches (shutdown): the batches before were
    /// written, the next pass takes the rest.
    pub stopped: bool,
    /// Reading facts from ClickHouse: the charges (the cursor), earlier finalizations,
    /// wallets, credits, invoice ids of periods in several currencies, late usage.
    pub read: Duration,
    /// Building the invoices (pure).
    pub build: Duration,
    /// Numbering and freezing in NATS KV.
    pub finalize: Duration,
    /// Writing invoices, lines and finalization transitions to ClickHouse.
    pub write: Duration,
}

/// Builds, finalizes and stores every invoice due at `now_ms`; returns them (drafts and the
/// frozen documents of invoices finalized by this pass), sorted by customer and period. Holds
/// every invoice of the pass: for callers that look at them (the API's run, tests); the
/// schedule uses [`invoice_pass_each`].
pub async fn invoice_pass(
    db: &Client,
    numbers: Option<&Numbers>,
    cfg: &InvoicerConfig,
    now_ms: i64,
) -> Result<Vec<Invoice>, InvoiceError> {
    let mut all = Vec::new();
    invoice_pass_each(db, numbers, cfg, now_ms, |batch| {
        all.extend(batch);
        ControlFlow::Continue(())
    })
    .await?;
    all.sort_by(|a, b| (&a.customer, a.period.start_ms).cmp(&(&b.customer, b.period.start_ms)));
    Ok(all)
}

/// [`invoice_pass`] in batches of whole customers ([`BATCH_CUSTOMERS`]): the charges are read
/// with one cursor in customer order, and each batch is built, finalized and written before
/// the next is read, so memory is bounded by a batch whatever the number of customers. Hands
/// each batch's written invoices to `each`, which stops the pass before the next batch by
/// answering `Break` (a shutdown: the pass ends within one batch, [`PassReport::stopped`]).
/// Numbers are given in period-end, customer, currency order within a batch, batches in
/// customer order. A failing or stopped batch ends the pass; the batches before it are written
/// and recorded, finalizations counted (the next pass skips what they finalized).
pub async fn invoice_pass_each(
    db: &Client,
    numbers: Option<&Numbers>,
    cfg: &InvoicerConfig,
    now_ms: i64,
    mut each: impl FnMut(Vec<Invoice>) -> ControlFlow<()>,
) -> Result<PassReport, InvoiceError> {
    let started = Instant::now();
    let mut report = PassReport::default();
    let t = Instant::now();
    let lookback_ms = ms(cfg.lookback_secs);
    // a period corrected or backfilled within the lookback is invoiced however old, for its
    // customer only (one that was finalized is in `done`: its late usage is `late`'s)
    let reach = tally_platform::usage::reach(db, now_ms - lookback_ms).await?;
    let applied = store::AppliedCredit::load(db).await?;
    let mut charges = store::ChargeBatches::open(db, &reach, BATCH_CUSTOMERS, BATCH_CHARGES)?;
    let mut adjustments = if cfg.features.late_usage_adjustments {
        late::pending(db, cfg, now_ms).await?
    } else {
        Vec::new()
    };
    report.read += t.elapsed();
    let pass = Pass {
        db,
        numbers,
        cfg,
        now_ms,
        applied,
    };
    loop {
        let t = Instant::now();
        let Some(batch) = charges.next_batch().await? else {
            break;
        };
        report.read += t.elapsed();
        report.batches += 1;
        let before = (report.invoices, report.finalized);
        let written = pass.batch(batch, &mut adjustments, &mut report).await;
        // counted as each batch is written: a later batch failing does not hide them
        metrics::batch_written(report.invoices - before.0, report.finalized - before.1);
        if each(written?).is_break() {
            report.stopped = true;
            return Ok(report);
        }
    }
    metrics::pass(started.elapsed());
    Ok(report)
}

/// What every batch of a pass shares.
struct Pass<'a> {
    db: &'a Client,
    numbers: Option<&'a Numbers>,
    cfg: &'a InvoicerConfig,
    now_ms: i64,
    /// The credit finalized invoices applied of the invoicer's grants (read once per pass).
    applied: store::AppliedCredit,
}

impl Pass<'_> {
    /// Builds, finalizes and writes the invoices of one batch of whole customers; returns
    /// what it wrote.
    async fn batch(
        &self,
        charges: Vec<ChargeLine>,
        adjustments: &mut Vec<late::Pending>,
        report: &mut PassReport,
    ) -> Result<Vec<Invoice>, InvoiceError> {
        let (db, cfg, now_ms) = (self.db, self.cfg, self.now_ms);
        let t = Instant::now();
        // one invoice per (customer, period, currency): a period with several currencies keeps
        // its id for its home currency, the others get their own (`currency_split`)
        let ids = currency_split::resolve(db, &charges).await?;
        let groups = per_invoice(charges);
        let invoice_ids: Vec<String> = groups
            .keys()
            .map(|(c, start, cur)| ids.id(c.as_str(), *start, cur.code()))
            .collect();
        // an invoice whose finalization is recorded is never rebuilt (a longer period's
        // charge, a year's fee, read after its invoice was finalized: its changes are `late`'s)
        let done = lifecycle::finalized_among(db, &invoice_ids).await?;
        let customers: Vec<CustomerId> = groups
            .keys()
            .map(|(c, _, _)| c.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // prepaid credit, one path: what the payments wallet reserved for the period's usage
        // (consumed in near real time, in its order of grants) plus what is left of the
        // invoicer's own grants (`POST /v1/credits`), both read for the batch's customers
        // (what finalized invoices applied of the grants: read once per pass)
        let wallet = store::wallet_credit(db, &customers).await?;
        let mut credits = store::credit_balances(db, &customers, &wallet, &self.applied).await?;
        report.read += t.elapsed();
        let t = Instant::now();
        let mut drafts = Vec::new();
        let mut due = Vec::new();
        for ((key, group), invoice_id) in groups.iter().zip(invoice_ids) {
            if done.contains(&invoice_id) {
                continue;
            }
            let credit = (&wallet, &mut credits);
            let Some(invoice) = self.build(key, group, invoice_id, credit, adjustments) else {
                continue;
            };
            match invoice.status {
                Status::Draft => drafts.push(invoice),
                Status::Finalized => due.push(invoice),
            }
        }
        report.build += t.elapsed();
        let t = Instant::now();
        let finalized = frozen(finalize(self.numbers, cfg, due).await?);
        report.finalize += t.elapsed();
        let t = Instant::now();
        let ids: Vec<String> = finalized.iter().map(|i| i.invoice_id.clone()).collect();
        let mut all = drafts;
        all.extend(finalized);
        // one insert per table for the batch
        store::write(db, &all).await?;
        lifecycle::record_finalized(db, &ids, ACTOR, "period ended and grace passed", now_ms)
            .await?;
        report.write += t.elapsed();
        report.invoices += all.len();
        report.finalized += ids.len();
        Ok(all)
    }

    /// Builds the invoice `invoice_id` of `group` with its prepaid credit: the wallet's
    /// reservation for it in its own currency plus what is left of the invoicer's grants
    /// (`credit`: the wallet, and the grants left per customer and currency, reduced by what
    /// a finalized invoice uses). None when it cannot be built (logged and counted: one
    /// customer's invoice never stops the others').
    fn build(
        &self,
        (customer, start_ms, currency): &InvoiceKey,
        group: &[ChargeLine],
        invoice_id: String,
        (wallet, credits): (&store::WalletCredit, &mut Credits),
        adjustments: &mut Vec<late::Pending>,
    ) -> Option<Invoice> {
        let key = (customer.clone(), *currency);
        let legacy = credits.get(&key).copied().unwrap_or(0).max(0);
        // only the wallet's reservation in the invoice's own currency is credited to it
        let reserved = wallet.reserved_for(&invoice_id, *currency);
        for (other, minor) in wallet.reserved_in_other_currencies(&invoice_id, *currency) {
            tracing::warn!(%customer, %invoice_id, %currency, reserved_currency = %other, reserved_minor = minor, "wallet reservation in another currency than the invoice's: not credited to it");
        }
        let terms = Terms {
            grace_ms: ms(self.cfg.grace_secs),
            payment_terms_days: self.cfg.payment_terms_days,
            issuer: self.cfg.issuer.clone(),
            credit_available_minor: reserved.saturating_add(legacy),
        };
        let period = crate::invoice::invoice_period(group).unwrap_or(group[0].period);
        let adj = late::take_for(adjustments, customer, *currency, period);
        let mut invoice = match build_as(invoice_id, group, adj, &terms, self.now_ms) {
            Ok(invoice) => invoice,
            Err(e) => {
                tracing::error!(%customer, period_start_ms = start_ms, error = %e, "invoice not built this pass; retried next pass");
                metrics::invoice_failed(failure(&e));
                return None;
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
        if invoice.status == Status::Finalized {
            if let Some(c) = credits.get_mut(&key) {
                *c -= from_legacy;
            }
        }
        Some(invoice)
    }
}

/// An invoice's identity in a batch: customer, period start, currency.
type InvoiceKey = (CustomerId, i64, Currency);

/// What is left of the invoicer's own grants per customer and currency.
type Credits = HashMap<(CustomerId, Currency), i64>;

/// A batch's charges per invoice, in (customer, period start, currency) order.
fn per_invoice(charges: Vec<ChargeLine>) -> BTreeMap<InvoiceKey, Vec<ChargeLine>> {
    let mut groups: BTreeMap<InvoiceKey, Vec<ChargeLine>> = BTreeMap::new();
    for c in charges {
        groups
            .entry((c.customer.clone(), c.period.start_ms, c.currency))
            .or_default()
            .push(c);
    }
    groups
}

/// The invoices frozen; one that could not be (numbered but not frozen) is logged and
/// counted, and the next pass gets the same number back and freezes it.
fn frozen(finalized: Vec<Result<Invoice, NotFrozen>>) -> Vec<Invoice> {
    finalized
        .into_iter()
        .filter_map(|r| match r {
            Ok(inv) => Some(inv),
            Err((id, customer, e)) => {
                tracing::error!(%customer, invoice_id = %id, error = %e, "invoice not finalized this pass; retried next pass");
                metrics::invoice_failed(metrics::BuildFailure::Finalize);
                None
            }
        })
        .collect()
}

fn failure(e: &BuildError) -> metrics::BuildFailure {
    match e {
        BuildError::MixedCurrencies { .. } => metrics::BuildFailure::MixedCurrencies,
        BuildError::Overflow { .. } => metrics::BuildFailure::Overflow,
        BuildError::Empty => metrics::BuildFailure::Empty,
    }
}

/// One invoice that could not be frozen: its id, customer and why.
type NotFrozen = (String, CustomerId, NumberingError);

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
        let stop_on_shutdown = |_| match shutdown.is_cancelled() {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        };
        match invoice_pass_each(&db, Some(&numbers), &cfg, now, stop_on_shutdown).await {
            Ok(r) if r.stopped => {
                tracing::info!(batches = r.batches, "invoicing pass stopped by shutdown");
                break;
            }
            Ok(r) => tracing::info!(
                invoices = r.invoices,
                finalized = r.finalized,
                batches = r.batches,
                "invoicing pass done"
            ),
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
