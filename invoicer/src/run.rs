//! One invoicing pass, and the schedule that repeats it.
//!
//! A pass reads the latest charges of every period that ended less than `lookback_secs` ago
//! (or is still open), groups them per (customer, period), builds each invoice and appends
//! it, skipping invoices already finalized. The same charges always give the same invoice
//! ids, lines and totals.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tally_platform::shutdown::Shutdown;

use crate::config::InvoicerConfig;
use crate::invoice::{build, BuildError, ChargeLine, Invoice, Terms};
use crate::{metrics, store};

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Builds and stores every invoice due at `now_ms`; returns them, sorted by customer and
/// period (finalized invoices left untouched are not returned).
pub async fn invoice_once(
    db: &Client,
    cfg: &InvoicerConfig,
    now_ms: i64,
) -> Result<Vec<Invoice>, InvoiceError> {
    let started = Instant::now();
    let lookback_ms = i64::try_from(cfg.lookback_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let grace_ms = i64::try_from(cfg.grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    let charges = store::charges_since(db, now_ms - lookback_ms).await?;
    let finalized = store::finalized_ids(db).await?;
    let mut groups: BTreeMap<(String, i64), Vec<ChargeLine>> = BTreeMap::new();
    for c in charges {
        groups
            .entry((c.customer.clone(), c.period.start_ms))
            .or_default()
            .push(c);
    }
    let terms = Terms {
        grace_ms,
        payment_terms_days: cfg.payment_terms_days,
        issuer: cfg.issuer.clone(),
        credit_available_minor: 0,
    };
    let mut invoices = Vec::with_capacity(groups.len());
    for group in groups.values() {
        let invoice = build(group, vec![], &terms, now_ms)?;
        if !finalized.contains(&invoice.invoice_id) {
            invoices.push(invoice);
        }
    }
    store::write(db, &invoices, now_ms).await?;
    metrics::pass(started.elapsed(), invoices.len());
    Ok(invoices)
}

/// Invoices every `interval_secs` until shutdown; a failed pass is logged and retried.
pub async fn run(db: Client, cfg: InvoicerConfig, shutdown: Shutdown, now_ms: fn() -> i64) {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match invoice_once(&db, &cfg, now_ms()).await {
            Ok(invoices) => tracing::info!(invoices = invoices.len(), "invoicing pass done"),
            Err(e) => {
                metrics::pass_failed();
                tracing::warn!(error = %e, "invoicing pass failed");
            }
        }
    }
}
