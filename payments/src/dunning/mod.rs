//! Dunning: payment retries and overdue reminders for invoices still owed, sent as signed
//! notifications to each customer's URL, with retried deliveries and a delivery log.
//!
//! A pass (every `dunning.interval_secs`) is stateless: it reads the open invoices, their
//! payments and the logs, decides the notices due ([`schedule`]), appends each new one with
//! its exact body, then attempts every undelivered notice whose backoff has passed, appending
//! one log row per attempt ([`log`]). A crash between steps repeats nothing that was logged.
//! This module never sends to a customer without a configured URL, never sends unsigned (each
//! endpoint with its own secret, [`deliver::endpoint_secret`]), and never decides a notice for
//! a paid, void or fully credited invoice.

pub mod deliver;
pub mod log;
pub mod retry;
pub mod schedule;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clickhouse::Client;
use tally_domain::InvoiceStatus;
use tally_platform::shutdown::{Shutdown, Ticker};

use crate::config::DunningConfig;
use crate::{metrics, store, Error};
use schedule::{DueNotice, Kind, Owed};

/// The actor of dunning's notices.
pub const ACTOR: &str = "payments:dunning";

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassReport {
    pub decided: usize,
    pub delivered: usize,
    pub failed_attempts: usize,
    pub without_url: usize,
    /// Gateway retry requests accepted (2xx) and refused or failed.
    pub retries_sent: usize,
    pub retries_failed: usize,
}

/// Invoices still owed: lifecycle open, amount due minus payments positive.
pub async fn owed(db: &Client) -> Result<Vec<Owed>, Error> {
    let statuses = tally_invoice::lifecycle::statuses(db).await?;
    let mut paid: HashMap<String, i64> = HashMap::new();
    let mut first_failure: HashMap<String, i64> = HashMap::new();
    let mut last_failure: HashMap<String, schedule::Failure> = HashMap::new();
    let mut recorded: std::collections::HashSet<String> = std::collections::HashSet::new();
    for p in store::all_payments(db).await? {
        if !recorded.contains(&p.invoice_id) {
            recorded.insert(p.invoice_id.clone());
        }
        match p.kind.as_str() {
            "payment" => {
                let sum = paid.entry(p.invoice_id).or_default();
                // stored payments were checked when applied; a sum past i64::MAX counts as paid
                // in full (no notice) rather than wrapping into a debt
                *sum = sum.checked_add(p.amount_minor).unwrap_or(i64::MAX);
            }
            "attempt" => {
                let f = first_failure.entry(p.invoice_id.clone()).or_insert(p.at_ms);
                *f = (*f).min(p.at_ms);
                let later = last_failure
                    .get(&p.invoice_id)
                    .is_none_or(|l| l.at_ms <= p.at_ms);
                if later {
                    last_failure.insert(
                        p.invoice_id,
                        schedule::Failure {
                            gateway: p.gateway,
                            payment_ref: p.gateway_ref,
                            payment_method: p.payment_method,
                            at_ms: p.at_ms,
                        },
                    );
                }
            }
            _ => {}
        }
    }
    Ok(store::finalized_invoices(db)
        .await?
        .into_iter()
        .filter(|inv| {
            let recorded = statuses.get(&inv.invoice_id).copied();
            let recorded = recorded.unwrap_or(InvoiceStatus::Draft);
            tally_invoice::lifecycle::current(recorded, inv.document_finalized()).is_open()
        })
        .map(|inv| Owed {
            outstanding_minor: inv
                .amount_due_minor
                .saturating_sub(paid.get(&inv.invoice_id).copied().unwrap_or(0)),
            first_failure_ms: first_failure.get(&inv.invoice_id).copied(),
            last_failure: last_failure.remove(&inv.invoice_id),
            has_payment_records: recorded.contains(&inv.invoice_id),
            due_at_ms: inv.due_at_ms,
            invoice_id: inv.invoice_id,
            customer: inv.customer,
            currency: inv.currency,
        })
        .collect())
}

fn body(n: &DueNotice, o: &Owed, now_ms: i64) -> String {
    serde_json::json!({
        "id": n.notification_id,
        "type": n.kind.as_str(),
        "created": now_ms.div_euclid(1000),
        "data": {
            "invoice_id": o.invoice_id,
            "customer": o.customer,
            "currency": o.currency,
            "amount_due_minor": o.outstanding_minor,
            "due_at_ms": o.due_at_ms,
            "step": n.step,
            "retry_attempt": (n.kind == Kind::PaymentRetry).then_some(n.step + 1),
        }
    })
    .to_string()
}

/// One dunning pass at `now_ms`; with `api`, due payment retries are also sent to the gateway.
pub async fn pass(
    db: &Client,
    cfg: &DunningConfig,
    api: Option<&retry::GatewayApi>,
    now_ms: i64,
) -> Result<PassReport, Error> {
    let mut report = PassReport::default();
    let decided = log::notification_ids(db).await?;
    let owed = owed(db).await?;
    if let Some(api) = api {
        retry::pass(db, api, cfg, &owed, now_ms, &mut report).await?;
    }
    for o in &owed {
        for n in schedule::due(
            o,
            &cfg.retry_schedule_secs,
            &cfg.reminder_schedule_secs,
            now_ms,
        ) {
            if decided.contains(&n.notification_id) {
                continue;
            }
            let Some(url) = cfg.endpoints.get(n.customer.as_str()) else {
                report.without_url += 1;
                tracing::debug!(customer = %n.customer, notification_id = %n.notification_id,
                    "no notification URL for the customer; notice not sent");
                continue;
            };
            let record = log::Notification {
                notification_id: n.notification_id.clone(),
                customer: n.customer.to_string(),
                invoice_id: n.invoice_id.clone(),
                kind: n.kind.as_str().to_owned(),
                step: n.step,
                url: url.clone(),
                body: body(&n, o, now_ms),
                actor: ACTOR.to_owned(),
                created_at_ms: now_ms,
                created_at: tally_platform::store::datetime_secs(now_ms),
            };
            log::append_notification(db, &record).await?;
            metrics::notification(n.kind.as_str());
            tracing::info!(notification_id = %n.notification_id, customer = %n.customer,
                invoice_id = %n.invoice_id, actor = ACTOR, at_ms = now_ms, "dunning notice decided");
            report.decided += 1;
        }
    }
    deliver_due(db, cfg, now_ms, &mut report).await?;
    Ok(report)
}

async fn deliver_due(
    db: &Client,
    cfg: &DunningConfig,
    now_ms: i64,
    report: &mut PassReport,
) -> Result<(), Error> {
    let trust = match cfg.ca_file.as_str() {
        "" => None,
        path => Some(
            crate::outbound::Trust::with_pem_file(std::path::Path::new(path))
                .map_err(|e| Error::Config(format!("dunning.ca_file: {e}")))?,
        ),
    };
    let attempts = log::attempts(db).await?;
    let timeout = Duration::from_millis(cfg.delivery_timeout_ms);
    for n in log::undelivered(db, &schedule::Kind::ALL.map(Kind::as_str)).await? {
        let (done, last_ms) = attempts.get(&n.notification_id).copied().unwrap_or((0, 0));
        if done >= cfg.delivery_attempts_max
            || schedule::next_attempt_ms(done, last_ms, cfg.delivery_backoff_secs) > now_ms
        {
            continue;
        }
        let started = Instant::now();
        let secret = deliver::endpoint_secret(cfg.signing_secret.expose(), &n.customer);
        let a = deliver::post(
            trust.as_ref(),
            &n.url,
            &n.notification_id,
            &n.body,
            &secret,
            now_ms.div_euclid(1000),
            timeout,
        )
        .await;
        metrics::delivery(
            if a.delivered { "delivered" } else { "failed" },
            started.elapsed(),
        );
        log::append_delivery(
            db,
            &log::Delivery::new(&n.notification_id, done + 1, &n.url, &a, now_ms),
        )
        .await?;
        if a.delivered {
            report.delivered += 1;
        } else {
            report.failed_attempts += 1;
            tracing::warn!(notification_id = %n.notification_id, attempt = done + 1,
                error = %a.error, "notification delivery failed");
        }
    }
    Ok(())
}

/// Runs passes every `interval_secs` until shutdown; a failed pass is logged and retried.
pub async fn run(
    db: Client,
    cfg: DunningConfig,
    api: Option<retry::GatewayApi>,
    shutdown: Shutdown,
    now_ms: fn() -> i64,
) {
    let mut ticker = Ticker::new(Duration::from_secs(cfg.interval_secs), shutdown);
    while ticker.next().await {
        match pass(&db, &cfg, api.as_ref(), now_ms()).await {
            Ok(r) => tracing::info!(
                decided = r.decided,
                delivered = r.delivered,
                failed = r.failed_attempts,
                "dunning pass done"
            ),
            Err(e) => tracing::warn!(error = %e, "dunning pass failed"),
        }
    }
}
