//! Invoice delivery (issue 17, item 9): every finalized invoice is emailed with its PDF to the
//! customer's billing contact and sent as a signed `invoice.finalized` webhook, each exactly
//! once, whatever restarts, crashes or second instances happen.
//!
//! A pass (every `invoice_delivery.interval_secs`) is driven by the stored state, never by an
//! event that could be lost:
//! 1. **decide**: for every invoice finalized within `lookback_secs` (`recent_invoices`: the
//!    base tables `invoices` and `invoice_transitions`, not the view) it appends to the notification log (`notifications`, dunning's) what is not
//!    there yet: `invoice.email:<invoice>` when the customer's latest catalog entry
//!    (`catalog_customers`) has a valid `billing_email` and an SMTP server is configured (the
//!    address, subject, text and deterministic `Message-ID` recorded), and
//!    `invoice.finalized:<invoice>` when the customer has a `dunning.endpoints` URL (the exact
//!    JSON body). Ids are deterministic, so a decision is made once; a crash after the
//!    invoicer finalized and before anything was sent only delays this to the next pass;
//! 2. **deliver**: every undelivered notification of these two kinds whose backoff has passed
//!    gets its next attempt, `n` = the attempts logged + 1, claimed first in NATS KV
//!    ([`claims`]): of all instances that read the same log, exactly one makes attempt `n`.
//!    The email is rendered from the frozen document (`tally_invoice::render::pdf`) and
//!    submitted over SMTP ([`email`]); the webhook is dunning's signed `POST`
//!    ([`crate::dunning::deliver`], the customer's own endpoint secret). Each attempt is one
//!    row of `notification_deliveries`; a failure is retried after `backoff_secs`, doubling,
//!    up to `attempts_max`.
//!
//! An attempt (store read, PDF render and SMTP session, or the webhook) is bounded as a whole
//! by `timeout_ms`, and its claim is stamped when it is made; a readable claim is taken as
//! abandoned only once [`claims::stale_after_ms`] (`timeout_ms` + [`claims::STALE_AFTER_MS`])
//! has passed, an unreadable one never.
//!
//! What it cannot exclude: a process that stops between the server's acceptance and the
//! logging of that attempt leaves a claim without a result; after that bound the attempt is logged as failed ("no result was logged") and the
//! message sent again, with the same `Message-ID` / `Tally-Notification-Id` for the receiver to
//! drop. Dunning's pass and the spend alerts deliver their own kinds only, so no notification
//! has two deliverers.

pub mod claims;
pub mod email;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use clickhouse::Client;
use futures::StreamExt;
use serde::Deserialize;
use tally_domain::CustomerId;
use tally_platform::clock::now_ms;
use tally_platform::shutdown::{Shutdown, Ticker};

use crate::config::{DunningConfig, InvoiceDeliveryConfig};
use crate::dunning::{deliver, log, schedule};
use crate::outbound::Trust;
use crate::{metrics, Error};
use claims::{Claimed, Claims};

/// The email's notification kind.
pub const EMAIL_KIND: &str = "invoice.email";
/// The webhook's notification kind (and its `type`).
pub const WEBHOOK_KIND: &str = "invoice.finalized";
/// Both kinds, the ones this module delivers.
pub const KINDS: [&str; 2] = [EMAIL_KIND, WEBHOOK_KIND];
/// The actor of the notifications this module appends.
pub const ACTOR: &str = "payments:invoice-delivery";
/// Attempts made at once in a pass.
pub const CONCURRENT_ATTEMPTS_MAX: usize = 8;
/// Invoices per `IN (...)` list (two notification ids each): the bound values are written
/// into the query text, which ClickHouse limits to 256 KiB.
const IN_LIST_MAX: usize = 500;

/// The email notification of an invoice.
pub fn email_id(invoice_id: &str) -> String {
    format!("{EMAIL_KIND}:{invoice_id}")
}

/// The webhook notification of an invoice.
pub fn webhook_id(invoice_id: &str) -> String {
    format!("{WEBHOOK_KIND}:{invoice_id}")
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassReport {
    pub emails_decided: usize,
    pub webhooks_decided: usize,
    /// Finalized invoices whose customer has no (valid) billing email, while email is on.
    pub without_email: usize,
    pub delivered: usize,
    pub failed_attempts: usize,
    /// Attempts another instance had claimed.
    pub claimed_elsewhere: usize,
    /// Claims of stopped processes logged as failed attempts.
    pub abandoned_claims: usize,
    /// Notifications out of attempts (not tried again).
    pub exhausted: usize,
}

/// A finalized invoice as this module reads it.
#[derive(Debug, Clone)]
struct Finalized {
    invoice_id: String,
    customer: CustomerId,
    document: String,
}

/// The pass's clock: its start (`now_ms` of [`Delivery::pass`], the wall clock in `run`) plus
/// the time elapsed since, so that each claim is stamped when it is made.
#[derive(Debug, Clone, Copy)]
struct PassClock {
    start_ms: i64,
    started: Instant,
}

impl PassClock {
    fn new(start_ms: i64) -> PassClock {
        PassClock {
            start_ms,
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(elapsed)
    }
}

/// The sender: decides and delivers.
pub struct Delivery {
    db: Client,
    cfg: InvoiceDeliveryConfig,
    dunning: DunningConfig,
    mailer: Option<email::Mailer>,
    trust: Option<Trust>,
    claims: Claims,
}

impl Delivery {
    /// A sender with `cfg` (validated), `dunning`'s endpoints, secret and CA file for the
    /// webhooks, and `claims`.
    pub fn new(
        db: Client,
        cfg: InvoiceDeliveryConfig,
        dunning: DunningConfig,
        claims: Claims,
    ) -> Result<Delivery, Error> {
        let mailer = if cfg.email() {
            Some(email::Mailer::new(&cfg).map_err(Error::Config)?)
        } else {
            None
        };
        let trust = match dunning.ca_file.as_str() {
            "" => None,
            path => Some(
                Trust::with_pem_file(std::path::Path::new(path))
                    .map_err(|e| Error::Config(format!("dunning.ca_file: {e}")))?,
            ),
        };
        Ok(Delivery {
            db,
            cfg,
            dunning,
            mailer,
            trust,
            claims,
        })
    }

    /// Opens the claims bucket of `cfg` on `js` (creating it) and builds the sender; `instance`
    /// names this process in its claims.
    pub async fn open(
        db: Client,
        cfg: InvoiceDeliveryConfig,
        dunning: DunningConfig,
        nats: &tally_platform::NatsConfig,
        js: &async_nats::jetstream::Context,
        instance: String,
    ) -> Result<Delivery, Error> {
        let bucket = cfg.claims_bucket(nats);
        let kv = tally_platform::streams::kv_bucket(js, &bucket, nats.replicas)
            .await
            .map_err(|e| Error::Config(format!("invoice_delivery.claims_bucket {bucket}: {e}")))?;
        Delivery::new(db, cfg, dunning, Claims::new(kv, instance))
    }

    /// One pass starting at `now_ms` (the wall clock in `run`; later moments of the pass are
    /// `now_ms` plus the time elapsed): decide, then deliver what is due.
    pub async fn pass(&self, now_ms: i64) -> Result<PassReport, Error> {
        let clock = PassClock::new(now_ms);
        let mut report = PassReport::default();
        let since_secs = now_ms
            .div_euclid(1000)
            .saturating_sub(self.cfg.lookback_secs);
        let invoices = recent_invoices(&self.db, since_secs).await?;
        if invoices.is_empty() {
            return Ok(report);
        }
        self.decide(&invoices, now_ms, &mut report).await?;
        self.deliver_due(&invoices, clock, &mut report).await?;
        Ok(report)
    }

    async fn decide(
        &self,
        invoices: &[Finalized],
        now_ms: i64,
        report: &mut PassReport,
    ) -> Result<(), Error> {
        let decided: HashSet<String> = notifications_of(&self.db, invoices)
            .await?
            .into_iter()
            .map(|n| n.notification_id)
            .collect();
        let contacts = if self.mailer.is_some() {
            let customers: Vec<&str> = invoices.iter().map(|i| i.customer.as_str()).collect();
            billing_emails(&self.db, &customers).await?
        } else {
            HashMap::new()
        };
        for f in invoices {
            let wants_email = self.mailer.is_some() && !decided.contains(&email_id(&f.invoice_id));
            let url = self
                .dunning
                .endpoints
                .get(f.customer.as_str())
                .filter(|_| self.cfg.webhook);
            let wants_webhook = url.is_some() && !decided.contains(&webhook_id(&f.invoice_id));
            if !wants_email && !wants_webhook {
                continue;
            }
            let inv: tally_invoice::Invoice = match serde_json::from_str(&f.document) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(invoice_id = %f.invoice_id, error = %e,
                        "finalized invoice document unreadable; not delivered");
                    continue;
                }
            };
            if wants_email {
                match contacts.get(f.customer.as_str()) {
                    Some(to) => {
                        let n = self.email_notification(&inv, to, now_ms)?;
                        self.append(&n, now_ms).await?;
                        report.emails_decided += 1;
                    }
                    None => {
                        report.without_email += 1;
                        tracing::debug!(customer = %f.customer, invoice_id = %f.invoice_id,
                            "no billing_email in the customer's catalog entry; invoice not emailed");
                    }
                }
            }
            if let (true, Some(url)) = (wants_webhook, url) {
                let n = webhook_notification(&inv, url, now_ms);
                self.append(&n, now_ms).await?;
                report.webhooks_decided += 1;
            }
        }
        Ok(())
    }

    async fn append(&self, n: &log::Notification, now_ms: i64) -> Result<(), Error> {
        log::append_notification(&self.db, n).await?;
        metrics::notification(if n.kind == EMAIL_KIND {
            EMAIL_KIND
        } else {
            WEBHOOK_KIND
        });
        tracing::info!(notification_id = %n.notification_id, customer = %n.customer,
            invoice_id = %n.invoice_id, actor = ACTOR, at_ms = now_ms, "invoice delivery decided");
        Ok(())
    }

    fn email_notification(
        &self,
        inv: &tally_invoice::Invoice,
        to: &str,
        now_ms: i64,
    ) -> Result<log::Notification, Error> {
        let from = email::mailbox(&self.cfg.from).map_err(Error::Config)?;
        let id = email_id(&inv.invoice_id);
        let envelope = email::Envelope {
            to: to.to_owned(),
            from: self.cfg.from.clone(),
            reply_to: self.cfg.reply_to.clone(),
            subject: email::subject(inv),
            message_id: email::message_id(&inv.invoice_id, &from),
            text: email::text(inv),
            attachment_name: format!("{}.pdf", email::number(inv)),
        };
        let body = serde_json::json!({
            "id": id,
            "type": EMAIL_KIND,
            "created": now_ms.div_euclid(1000),
            "data": envelope,
        })
        .to_string();
        Ok(notification(
            id,
            inv,
            EMAIL_KIND,
            format!("mailto:{to}"),
            body,
            now_ms,
        ))
    }

    async fn deliver_due(
        &self,
        invoices: &[Finalized],
        clock: PassClock,
        report: &mut PassReport,
    ) -> Result<(), Error> {
        let due = undelivered(&self.db, invoices).await?;
        let now_ms = clock.now_ms();
        let mut work = Vec::new();
        for (n, done, last_ms) in due {
            if done >= self.cfg.attempts_max {
                report.exhausted += 1;
                continue;
            }
            if schedule::next_attempt_ms(done, last_ms, self.cfg.backoff_secs) > now_ms {
                continue;
            }
            work.push((n, done + 1));
        }
        let outcomes: Vec<Result<Outcome, Error>> = futures::stream::iter(work)
            .map(|(n, attempt)| self.attempt(n, attempt, clock))
            .buffer_unordered(CONCURRENT_ATTEMPTS_MAX)
            .collect()
            .await;
        for o in outcomes {
            match o? {
                Outcome::Delivered => report.delivered += 1,
                Outcome::Failed => report.failed_attempts += 1,
                Outcome::ClaimedElsewhere => report.claimed_elsewhere += 1,
                Outcome::Abandoned => report.abandoned_claims += 1,
            }
        }
        Ok(())
    }

    /// Attempt `attempt` of `n`, if this instance gets its claim (stamped with `clock`'s now
    /// at the claim).
    async fn attempt(
        &self,
        n: log::Notification,
        attempt: u32,
        clock: PassClock,
    ) -> Result<Outcome, Error> {
        let id = n.notification_id.clone();
        let claimed_at = clock.now_ms();
        match self
            .claims
            .claim(&id, attempt, claimed_at)
            .await
            .map_err(Error::Config)?
        {
            Claimed::Mine => {}
            Claimed::Taken(claim) => {
                // only a readable claim older than the bound is abandoned; an absent or
                // unparsable one (a lagging replica right after another's create) is looked
                // at again next pass
                let Some(claim) = claim
                    .filter(|c| claims::is_stale(Some(c), clock.now_ms(), self.cfg.timeout_ms))
                else {
                    return Ok(Outcome::ClaimedElsewhere);
                };
                let (by, at_ms) = (claim.by, claim.at_ms);
                let a = deliver::Attempt {
                    status_code: 0,
                    delivered: false,
                    error: format!(
                        "claimed by {by} at {at_ms} ms; no result was logged (that process \
                         stopped during the attempt): it may have been sent"
                    ),
                };
                tracing::warn!(notification_id = %id, attempt, by = %by,
                    "an attempt claimed by a stopped process is logged as failed");
                log::append_delivery(
                    &self.db,
                    &log::Delivery::new(&id, attempt, &n.url, &a, at_ms),
                )
                .await?;
                return Ok(Outcome::Abandoned);
            }
        }
        let started = Instant::now();
        let limit = Duration::from_millis(self.cfg.timeout_ms);
        // one limit on the whole attempt (store read, render and SMTP, or the webhook), so
        // that a claim never outlives claims::stale_after_ms unlogged while its process runs
        let a = match tokio::time::timeout(limit, self.send(&n, claimed_at)).await {
            Ok(a) => a,
            Err(_) => deliver::Attempt {
                status_code: 0,
                delivered: false,
                error: format!(
                    "the attempt took more than invoice_delivery.timeout_ms ({} ms)",
                    self.cfg.timeout_ms
                ),
            },
        };
        metrics::delivery(
            if a.delivered { "delivered" } else { "failed" },
            started.elapsed(),
        );
        let row = log::Delivery::new(&id, attempt, &n.url, &a, claimed_at);
        append_delivery(&self.db, &row).await?;
        if a.delivered {
            tracing::info!(notification_id = %id, attempt, "invoice delivered");
            Ok(Outcome::Delivered)
        } else {
            let last = attempt >= self.cfg.attempts_max;
            tracing::warn!(notification_id = %id, attempt, error = %a.error, last,
                "invoice delivery attempt failed");
            Ok(Outcome::Failed)
        }
    }

    /// One attempt of `n`, by its kind, unbounded (the caller bounds it).
    async fn send(&self, n: &log::Notification, claimed_at: i64) -> deliver::Attempt {
        if n.kind == EMAIL_KIND {
            return self.send_email(n, claimed_at).await;
        }
        let secret = deliver::endpoint_secret(self.dunning.signing_secret.expose(), &n.customer);
        deliver::post(
            self.trust.as_ref(),
            &n.url,
            &n.notification_id,
            &n.body,
            &secret,
            claimed_at.div_euclid(1000),
            Duration::from_millis(self.cfg.timeout_ms),
        )
        .await
    }

    /// One SMTP submission of the email notification `n` (its PDF rendered from the frozen
    /// document now, on a blocking thread so that the attempt's limit can end the wait).
    async fn send_email(&self, n: &log::Notification, now_ms: i64) -> deliver::Attempt {
        let failed = |error: String| deliver::Attempt {
            status_code: 0,
            delivered: false,
            error,
        };
        let Some(mailer) = &self.mailer else {
            return failed("invoice_delivery.smtp_host is not set in this process".into());
        };
        let Some(envelope) = serde_json::from_str::<serde_json::Value>(&n.body)
            .ok()
            .and_then(|b| serde_json::from_value::<email::Envelope>(b["data"].clone()).ok())
        else {
            return failed("the notification's body is not an email envelope".into());
        };
        let inv = match document(&self.db, &n.invoice_id).await {
            Ok(Some(d)) => match serde_json::from_str::<tally_invoice::Invoice>(&d) {
                Ok(inv) => inv,
                Err(e) => return failed(format!("invoice document: {e}")),
            },
            Ok(None) => return failed("the invoice is not stored".into()),
            Err(e) => return failed(format!("reading the invoice: {e}")),
        };
        let rendered = tokio::task::spawn_blocking(move || {
            tally_invoice::render::pdf(&inv).map_err(|e| e.to_string())
        })
        .await;
        let pdf = match rendered {
            Ok(Ok(pdf)) => pdf,
            Ok(Err(e)) => return failed(format!("rendering the PDF: {e}")),
            Err(e) => return failed(format!("rendering the PDF: {e}")),
        };
        let message = match email::message(&envelope, pdf, now_ms) {
            Ok(m) => m,
            Err(e) => return failed(e),
        };
        match mailer.send(message).await {
            Ok(reply) => deliver::Attempt {
                status_code: reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(250),
                delivered: true,
                error: String::new(),
            },
            Err(error) => {
                let code = error
                    .split(|c: char| !c.is_ascii_digit())
                    .find(|t| t.len() == 3)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                deliver::Attempt {
                    status_code: code,
                    delivered: false,
                    error,
                }
            }
        }
    }
}

/// What one attempt came to.
enum Outcome {
    Delivered,
    Failed,
    ClaimedElsewhere,
    Abandoned,
}

/// The webhook of a finalized invoice: dunning's envelope, the invoice's facts as `data`.
pub fn webhook_body(inv: &tally_invoice::Invoice, notification_id: &str, now_ms: i64) -> String {
    serde_json::json!({
        "id": notification_id,
        "type": WEBHOOK_KIND,
        "created": now_ms.div_euclid(1000),
        "data": {
            "invoice_id": inv.invoice_id,
            "number": inv.number,
            "customer": inv.customer,
            "currency": inv.currency,
            "period_start": inv.period_start,
            "period_end": inv.period_end,
            "issued_at": inv.issued_at,
            "subtotal_minor": inv.subtotal_minor,
            "discount_minor": inv.discount_minor,
            "tax_minor": inv.tax_minor,
            "total_minor": inv.total_minor,
            "credits_applied_minor": inv.credits_applied_minor,
            "amount_due_minor": inv.amount_due_minor,
            "due_date": inv.due_date,
            "due_at_ms": inv.due_at_ms,
            "lines": inv.lines.len(),
        }
    })
    .to_string()
}

fn webhook_notification(inv: &tally_invoice::Invoice, url: &str, now_ms: i64) -> log::Notification {
    let id = webhook_id(&inv.invoice_id);
    let body = webhook_body(inv, &id, now_ms);
    notification(id, inv, WEBHOOK_KIND, url.to_owned(), body, now_ms)
}

fn notification(
    id: String,
    inv: &tally_invoice::Invoice,
    kind: &str,
    url: String,
    body: String,
    now_ms: i64,
) -> log::Notification {
    log::Notification {
        notification_id: id,
        customer: inv.customer.to_string(),
        invoice_id: inv.invoice_id.clone(),
        kind: kind.to_owned(),
        step: 0,
        url,
        body,
        actor: ACTOR.to_owned(),
        created_at_ms: now_ms,
        created_at: tally_platform::store::datetime_secs(now_ms),
    }
}

#[derive(clickhouse::Row, Deserialize)]
struct Contact {
    customer: String,
    body: String,
}

/// The valid `billing_email` of each of `customers` with one (its catalog entry's highest
/// version); an invalid stored address is logged and left out.
async fn billing_emails(db: &Client, customers: &[&str]) -> Result<HashMap<String, String>, Error> {
    #[derive(Deserialize)]
    struct Body {
        billing_email: Option<String>,
    }
    let mut customers: Vec<&str> = customers.to_vec();
    customers.sort_unstable();
    customers.dedup();
    let mut rows: Vec<Contact> = Vec::new();
    for chunk in customers.chunks(IN_LIST_MAX) {
        let sql = format!(
            "SELECT customer, argMax(body, version) FROM catalog_customers \
             WHERE customer IN ({}) GROUP BY customer",
            placeholders(chunk.len())
        );
        rows.extend(
            bind_all(db.query(&sql), chunk)
                .fetch_all::<Contact>()
                .await?,
        );
    }
    let mut out = HashMap::new();
    for r in rows {
        let Some(email) = serde_json::from_str::<Body>(&r.body)
            .ok()
            .and_then(|b| b.billing_email)
        else {
            continue;
        };
        match email::check_address(&email) {
            Ok(()) => {
                out.insert(r.customer, email);
            }
            Err(e) => tracing::warn!(customer = %r.customer, error = %e,
                "the catalog's billing_email is not usable; invoice not emailed"),
        }
    }
    Ok(out)
}

/// `?, ?, ?` for an `IN` list of `n` values (ClickHouse 18.16 takes no array after `IN`).
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `q` with each of `values` bound, in order.
fn bind_all<T: serde::Serialize>(
    mut q: clickhouse::query::Query,
    values: &[T],
) -> clickhouse::query::Query {
    for v in values {
        q = q.bind(v);
    }
    q
}

/// The invoices finalized (not draft, not void) at or after `since_secs`, in id order, with
/// their frozen documents. `invoices` is sorted by `invoice_id` only and nothing records a
/// finalization by time (`invoice_transitions` is sorted by `(invoice_id, transition_id)`, and
/// the invoicer writes no transition when it finalizes), so the candidates come from one scan
/// of the narrow columns `invoice_id`, `status` and `issued_at` of `invoices` (never the
/// documents, never the view `v_invoices`, which 18.16 evaluates whole: every version's
/// document plus a grouping of every transition); the latest version of each candidate and
/// its lifecycle are then read by primary key (`invoice_id IN (...)`).
async fn recent_invoices(db: &Client, since_secs: i64) -> Result<Vec<Finalized>, Error> {
    #[derive(clickhouse::Row, Deserialize)]
    struct Stored {
        invoice_id: String,
        customer: String,
        document: String,
        status: String,
        issued_secs: i64,
    }
    #[derive(clickhouse::Row, Deserialize)]
    struct Terminal {
        invoice_id: String,
        terminal: String,
    }
    let ids: Vec<String> = db
        .query(
            "SELECT DISTINCT invoice_id FROM invoices \
             WHERE status NOT IN ('draft', 'void') AND toInt64(toUInt32(issued_at)) >= ?",
        )
        .bind(since_secs)
        .fetch_all()
        .await?;
    let mut ids = ids;
    ids.sort_unstable();
    let mut out = Vec::new();
    for chunk in ids.chunks(IN_LIST_MAX) {
        let list = placeholders(chunk.len());
        let stored: Vec<Stored> = bind_all(
            db.query(&format!(
                "SELECT invoice_id, argMax(customer, version), argMax(document, version), \
                   argMax(status, version), toInt64(toUInt32(argMax(issued_at, version))) \
                 FROM invoices WHERE invoice_id IN ({list}) \
                 GROUP BY invoice_id ORDER BY invoice_id"
            )),
            chunk,
        )
        .fetch_all()
        .await?;
        let void: HashSet<String> = bind_all(
            db.query(&format!(
                "SELECT invoice_id, argMinIf(to_status, at_ms, to_status IN ('paid', 'void')) \
                 FROM invoice_transitions WHERE invoice_id IN ({list}) GROUP BY invoice_id"
            )),
            chunk,
        )
        .fetch_all::<Terminal>()
        .await?
        .into_iter()
        .filter(|t| t.terminal == "void")
        .map(|t| t.invoice_id)
        .collect();
        out.extend(
            stored
                .into_iter()
                .filter(|s| {
                    s.status != "draft"
                        && s.status != "void"
                        && s.issued_secs >= since_secs
                        && !void.contains(&s.invoice_id)
                })
                .filter_map(|s| match CustomerId::new(s.customer) {
                    Ok(customer) => Some(Finalized {
                        invoice_id: s.invoice_id,
                        customer,
                        document: s.document,
                    }),
                    // one invoice's bad customer id never stops the others' delivery
                    Err(e) => {
                        tracing::error!(invoice_id = %s.invoice_id, error = %e,
                            "finalized invoice's customer id does not validate; not delivered");
                        None
                    }
                }),
        );
    }
    Ok(out)
}

/// The latest stored document of `invoice_id` (by primary key).
async fn document(db: &Client, invoice_id: &str) -> Result<Option<String>, Error> {
    Ok(db
        .query(
            "SELECT document FROM invoices WHERE invoice_id = ? \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(invoice_id)
        .fetch_optional::<String>()
        .await?)
}

/// The notifications of this module's two kinds for `invoices` (the first record of each id),
/// read by the sorting key of `notifications`, `(customer, notification_id)`.
async fn notifications_of(
    db: &Client,
    invoices: &[Finalized],
) -> Result<Vec<log::Notification>, Error> {
    let mut out = Vec::new();
    for chunk in invoices.chunks(IN_LIST_MAX) {
        let mut customers: Vec<&str> = chunk.iter().map(|f| f.customer.as_str()).collect();
        customers.sort_unstable();
        customers.dedup();
        let ids: Vec<String> = chunk
            .iter()
            .flat_map(|f| [email_id(&f.invoice_id), webhook_id(&f.invoice_id)])
            .collect();
        let sql = format!(
            "SELECT notification_id, argMin(customer, created_at_ms), \
               argMin(invoice_id, created_at_ms), argMin(kind, created_at_ms), \
               argMin(step, created_at_ms), argMin(url, created_at_ms), \
               argMin(body, created_at_ms), argMin(actor, created_at_ms), \
               min(created_at_ms), toUInt32(min(created_at)) \
             FROM notifications WHERE customer IN ({}) AND notification_id IN ({}) \
             GROUP BY notification_id ORDER BY notification_id",
            placeholders(customers.len()),
            placeholders(ids.len())
        );
        let q = bind_all(bind_all(db.query(&sql), &customers), &ids);
        out.extend(q.fetch_all::<log::Notification>().await?);
    }
    Ok(out)
}

#[derive(clickhouse::Row, Deserialize)]
struct Attempts {
    notification_id: String,
    attempts: u32,
    last_ms: i64,
    delivered: u8,
}

/// The notifications of `invoices` without a successful delivery, with the highest attempt
/// logged and when it started; the attempts read by the sorting key of
/// `notification_deliveries`, `(notification_id, attempt)`.
async fn undelivered(
    db: &Client,
    invoices: &[Finalized],
) -> Result<Vec<(log::Notification, u32, i64)>, Error> {
    let pending = notifications_of(db, invoices).await?;
    let mut attempts: HashMap<String, Attempts> = HashMap::new();
    for chunk in pending.chunks(2 * IN_LIST_MAX) {
        let ids: Vec<&str> = chunk.iter().map(|n| n.notification_id.as_str()).collect();
        let sql = format!(
            "SELECT notification_id, toUInt32(max(attempt)), toInt64(max(at_ms)), \
               toUInt8(max(delivered)) \
             FROM notification_deliveries WHERE notification_id IN ({}) \
             GROUP BY notification_id",
            placeholders(ids.len())
        );
        for a in bind_all(db.query(&sql), &ids)
            .fetch_all::<Attempts>()
            .await?
        {
            attempts.insert(a.notification_id.clone(), a);
        }
    }
    Ok(pending
        .into_iter()
        .filter_map(|n| match attempts.get(&n.notification_id) {
            Some(a) if a.delivered != 0 => None,
            Some(a) => Some((n, a.attempts, a.last_ms)),
            None => Some((n, 0, 0)),
        })
        .collect())
}

/// Appends an attempt, retried a few times: the attempt happened, and losing its row would
/// leave its claim to go stale (the message sent again later).
async fn append_delivery(db: &Client, row: &log::Delivery) -> Result<(), Error> {
    for wait_secs in [1, 2, 4, 8] {
        match log::append_delivery(db, row).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(notification_id = %row.notification_id, error = %e,
                    "logging a delivery attempt failed; retrying");
                tokio::time::sleep(Duration::from_secs(wait_secs)).await;
            }
        }
    }
    Ok(log::append_delivery(db, row).await?)
}

/// Runs a pass at once and then every `interval_secs` until shutdown; a failed pass is logged
/// and retried at the next tick.
pub async fn run(delivery: Delivery, shutdown: Shutdown) {
    let mut ticker = Ticker::new(Duration::from_secs(delivery.cfg.interval_secs), shutdown);
    while ticker.next().await {
        match delivery.pass(now_ms()).await {
            Ok(r) => tracing::info!(
                emails = r.emails_decided,
                webhooks = r.webhooks_decided,
                delivered = r.delivered,
                failed = r.failed_attempts,
                "invoice delivery pass done"
            ),
            Err(e) => tracing::warn!(error = %e, "invoice delivery pass failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_per_invoice_and_kind() {
        assert_eq!(email_id("inv_1"), "invoice.email:inv_1");
        assert_eq!(webhook_id("inv_1"), "invoice.finalized:inv_1");
        assert_ne!(
            claims::key(&email_id("inv_1"), 1),
            claims::key(&webhook_id("inv_1"), 1)
        );
    }
}
