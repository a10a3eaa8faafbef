//! Spend alerts as signed webhooks: every budget threshold crossing the spend deciders publish
//! (`tally-spend`, JetStream stream `<nats.stream>_ALERTS`, subject
//! `<spend_subject_root>.alerts.<customer>`, once per threshold and period) becomes one
//! notification of kind `spend.threshold_crossed` to the customer's `dunning.endpoints` URL,
//! signed with that customer's own secret ([`deliver::endpoint_secret`]), recorded and retried
//! exactly like dunning's notices (the same `notifications` and `notification_deliveries`
//! log, the same backoff and attempt limit).
//!
//! A durable pull consumer (`payments.spend_alerts_consumer`) reads the alerts in batches:
//! it waits for a first message and takes what else the client holds already, at most
//! [`BATCH_MAX`] (no extra wait: a backlog makes the batches bigger). A malformed message is
//! terminated on its own. For the rest, one read of the log tells which of the batch's
//! notifications (id `spend.threshold_crossed:<alert_id>`, per customer) are in it already,
//! one insert appends the new ones (their exact bodies), and only then is every message of
//! the batch acknowledged; deliveries start after the acks. A message whose notification is
//! already in the log (a redelivery after a crash between the insert and the acks, a repeat
//! published outside JetStream's duplicate window, a repeat within the same batch) is
//! acknowledged without a second one. If the read or the insert fails, every alert of the
//! batch is negatively acknowledged and comes back (those the insert did write are then
//! found in the log). Delivery is not on the consumer's path:
//! each notification has its own task (attempt now, then after the backoff, each attempt one
//! row of `notification_deliveries`), at most one attempt at a time per customer and
//! [`CONCURRENT_ATTEMPTS_MAX`] in all, so a customer's slow or failing endpoint delays no
//! other customer's alerts. After a restart the log tells which notifications are still
//! undelivered and how many attempts each had ([`Deliverer::scan`]). Dunning's pass never
//! delivers these (it delivers its own kinds only), so no notification has two deliverers in a
//! process. What it cannot exclude: a crash between a receiver's 2xx and the logging of that
//! attempt sends the notification again after the restart, with the same
//! `Tally-Notification-Id` for the receiver to drop (as for dunning's notices).
//!
//! It never publishes to NATS and never declares the stream (the deciders own it); it waits
//! for the stream to exist. The wire form of an alert is defined here ([`Alert`]), not
//! imported from the rater: stages never depend on each other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use clickhouse::Client;
use futures::StreamExt;
use serde::Deserialize;
use tally_platform::clock::now_ms;
use tally_platform::shutdown::{Shutdown, Ticker};
use tally_platform::NatsConfig;
use tokio::sync::{Notify, Semaphore};

use crate::config::{DunningConfig, PaymentsConfig};
use crate::dunning::{deliver, log, schedule};
use crate::metrics;
use crate::outbound::Trust;

/// The notification kind (and the alert's `type`).
pub const KIND: &str = "spend.threshold_crossed";

/// The actor of the notifications this module appends.
pub const ACTOR: &str = "payments:spend-alerts";

/// Delivery attempts running at once, all customers together (one per customer at most).
pub const CONCURRENT_ATTEMPTS_MAX: usize = 32;

/// Most alert messages taken together: one read of the log, one insert, then the acks.
pub const BATCH_MAX: usize = 256;

/// Largest alert read; a larger message is refused as malformed.
pub const ALERT_BYTES_MAX: usize = 16 * 1024;

/// Where the alerts are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsSource {
    /// `<nats.stream>_ALERTS` (declared by the spend deciders).
    pub stream: String,
    /// `<spend_subject_root>.alerts`: a customer's alerts are on `<this>.<customer>`.
    pub subject_root: String,
    /// The durable consumer's name.
    pub consumer: String,
}

impl AlertsSource {
    pub fn new(nats: &NatsConfig, payments: &PaymentsConfig) -> AlertsSource {
        AlertsSource {
            stream: format!("{}_ALERTS", nats.stream),
            subject_root: format!("{}.alerts", payments.spend_subject_root),
            consumer: payments.spend_alerts_consumer.clone(),
        }
    }

    /// The consumer's filter: every customer's alerts.
    pub fn filter_subject(&self) -> String {
        format!("{}.>", self.subject_root)
    }
}

/// The fields of a published alert this module relies on (the decider's `Alert`; the
/// webhook's `data` is the published object as it is, every field included).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Alert {
    #[serde(rename = "type")]
    pub event_type: String,
    pub alert_id: String,
    pub customer: String,
    pub budget_id: String,
    pub period_start_ms: i64,
    pub threshold: u8,
    pub crossed_at_ms: i64,
}

/// Why a message is not an alert (it is acknowledged as terminal: redelivering cannot fix it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a spend alert: {0}")]
pub struct Malformed(String);

/// Parses the message on `subject` (`<root>.alerts.<customer>`): the alert and its JSON object.
pub fn parse(
    source: &AlertsSource,
    subject: &str,
    payload: &[u8],
) -> Result<(Alert, serde_json::Map<String, serde_json::Value>), Malformed> {
    if payload.len() > ALERT_BYTES_MAX {
        return Err(Malformed(format!(
            "{} bytes, more than {ALERT_BYTES_MAX}",
            payload.len()
        )));
    }
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(payload).map_err(|e| Malformed(format!("json: {e}")))?;
    let alert: Alert = serde_json::from_value(serde_json::Value::Object(object.clone()))
        .map_err(|e| Malformed(format!("fields: {e}")))?;
    if alert.event_type != KIND {
        return Err(Malformed(format!("type {:?}", alert.event_type)));
    }
    let printable = |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
    if !printable(&alert.alert_id) || !printable(&alert.customer) {
        return Err(Malformed(
            "alert_id or customer empty, too long or not printable".into(),
        ));
    }
    let on = subject
        .strip_prefix(source.subject_root.as_str())
        .and_then(|s| s.strip_prefix('.'));
    if on != Some(alert.customer.as_str()) {
        return Err(Malformed(format!(
            "customer {:?} published on {subject:?}",
            alert.customer
        )));
    }
    Ok((alert, object))
}

/// The notification id of an alert: one notification per alert id, ever.
pub fn notification_id(alert_id: &str) -> String {
    format!("{KIND}:{alert_id}")
}

/// The webhook body: dunning's envelope, the published alert as `data`.
pub fn body(
    notification_id: &str,
    alert: &serde_json::Map<String, serde_json::Value>,
    now_ms: i64,
) -> String {
    serde_json::json!({
        "id": notification_id,
        "type": KIND,
        "created": now_ms.div_euclid(1000),
        "data": alert,
    })
    .to_string()
}

/// What became of one alert message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Appended to the log; delivery started.
    Recorded(String),
    /// Its notification was in the log already: nothing appended, nothing sent again.
    Duplicate(String),
    /// The customer has no `dunning.endpoints` URL: nothing sent (as for dunning).
    WithoutUrl,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Recorded(_) => "recorded",
            Outcome::Duplicate(_) => "duplicate",
            Outcome::WithoutUrl => "without_url",
        }
    }
}

/// What becomes of each alert of a batch (pure), in order: `known` holds the (customer,
/// notification id) pairs in the log already; an alert whose pair is known, or came earlier
/// in the batch, is a duplicate; one of a customer without a URL is not recorded.
pub fn plan(
    alerts: &[&Alert],
    endpoints: &BTreeMap<String, String>,
    mut known: HashSet<(String, String)>,
) -> Vec<Outcome> {
    alerts
        .iter()
        .map(|alert| {
            if !endpoints.contains_key(&alert.customer) {
                return Outcome::WithoutUrl;
            }
            let id = notification_id(&alert.alert_id);
            if known.insert((alert.customer.clone(), id.clone())) {
                Outcome::Recorded(id)
            } else {
                Outcome::Duplicate(id)
            }
        })
        .collect()
}

/// A batch recorded: each alert's outcome (in order) and the notifications appended, to be
/// delivered ([`Deliverer::start_all`]) once the messages are acknowledged.
#[derive(Debug)]
pub struct Recorded {
    pub outcomes: Vec<Outcome>,
    pub new: Vec<log::Notification>,
}

/// The (customer, notification id) pairs of `alerts` already in the log: one query.
async fn known(
    db: &Client,
    alerts: &[&Alert],
) -> Result<HashSet<(String, String)>, clickhouse::error::Error> {
    let customers: Vec<&str> = alerts
        .iter()
        .map(|a| a.customer.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let ids: Vec<String> = alerts
        .iter()
        .map(|a| notification_id(&a.alert_id))
        .collect();
    let rows: Vec<(String, String)> = db
        .query(
            "SELECT DISTINCT customer, notification_id FROM notifications \
             WHERE customer IN (SELECT arrayJoin(?)) AND has(?, notification_id)",
        )
        .bind(customers)
        .bind(ids)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().collect())
}

/// Appends `ns` in one insert.
async fn append_all(db: &Client, ns: &[log::Notification]) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<log::Notification>("notifications").await?;
    for n in ns {
        insert.write(n).await?;
    }
    insert.end().await
}

/// Records the `alerts` of a batch (each with its published object) at `now_ms`: one read of
/// the log, one insert of the notifications not in it. Starts no delivery: the caller
/// acknowledges the messages after `Ok`, then starts [`Recorded::new`].
pub async fn record_batch(
    deliverer: &Arc<Deliverer>,
    alerts: &[(Alert, serde_json::Map<String, serde_json::Value>)],
    now_ms: i64,
) -> Result<Recorded, clickhouse::error::Error> {
    let endpoints = &deliverer.cfg.endpoints;
    let with_url: Vec<&Alert> = alerts
        .iter()
        .map(|(a, _)| a)
        .filter(|a| endpoints.contains_key(&a.customer))
        .collect();
    let known = match with_url.is_empty() {
        true => HashSet::new(),
        false => known(&deliverer.db, &with_url).await?,
    };
    let all: Vec<&Alert> = alerts.iter().map(|(a, _)| a).collect();
    let outcomes = plan(&all, endpoints, known);
    let mut new = Vec::new();
    for ((alert, object), outcome) in alerts.iter().zip(&outcomes) {
        let (Outcome::Recorded(id), Some(url)) = (outcome, endpoints.get(&alert.customer)) else {
            continue;
        };
        new.push(log::Notification {
            notification_id: id.clone(),
            customer: alert.customer.clone(),
            invoice_id: String::new(),
            kind: KIND.to_owned(),
            step: u32::from(alert.threshold),
            url: url.clone(),
            body: body(id, object, now_ms),
            actor: ACTOR.to_owned(),
            created_at_ms: now_ms,
            created_at: tally_platform::store::datetime_secs(now_ms),
        });
    }
    if !new.is_empty() {
        append_all(&deliverer.db, &new).await?;
    }
    for ((alert, _), outcome) in alerts.iter().zip(&outcomes) {
        if let Outcome::Recorded(id) = outcome {
            metrics::notification(KIND);
            tracing::info!(notification_id = %id, customer = %alert.customer, budget_id = %alert.budget_id,
                threshold = alert.threshold, actor = ACTOR, at_ms = now_ms, "spend alert notification decided");
        }
    }
    if outcomes.iter().any(|o| matches!(o, Outcome::Duplicate(_))) {
        // undelivered after a crash? the scan picks it up (the log says where it stands)
        deliverer.rescan.notify_one();
    }
    Ok(Recorded { outcomes, new })
}

/// Records one `alert` (published as `object`) at `now_ms` unless its notification already
/// is, and starts its delivery (a batch of one, [`record_batch`]).
pub async fn record(
    deliverer: &Arc<Deliverer>,
    alert: &Alert,
    object: &serde_json::Map<String, serde_json::Value>,
    now_ms: i64,
) -> Result<Outcome, clickhouse::error::Error> {
    let recorded = record_batch(deliverer, &[(alert.clone(), object.clone())], now_ms).await?;
    deliverer.start_all(recorded.new);
    Ok(recorded
        .outcomes
        .into_iter()
        .next()
        .unwrap_or(Outcome::WithoutUrl))
}

#[derive(Default)]
struct Tracking {
    /// Notifications with a delivery task in this process.
    in_flight: HashSet<String>,
    /// Notifications whose task ended here (delivered, out of attempts, or unloggable): the
    /// scan may still list them for a moment (it read the log before the last attempt was
    /// appended) and must not start them again.
    finished: HashSet<String>,
}

/// What every attempt of one notification sends with.
struct Sending {
    /// The customer's endpoint secret (`Tally-Signature`).
    secret: crate::signature::Secret,
    timeout: Duration,
    /// When the threshold was crossed (from the body), for the delivery latency metric.
    crossed_at_ms: Option<i64>,
}

/// How one attempt ended.
enum Turn {
    /// Sent and refused or unanswered at `at_ms`: try again after the backoff.
    Failed { at_ms: i64 },
    /// Delivered, or this process cannot go on with it (its attempt not logged, its
    /// semaphores closed): done here.
    Finished,
    /// Shutdown: another process (or this one after a restart) takes it up.
    Interrupted,
}

/// Delivers the spend alert notifications: one task per notification, one attempt at a time
/// per customer.
pub struct Deliverer {
    db: Client,
    cfg: DunningConfig,
    trust: Option<Trust>,
    tracking: Mutex<Tracking>,
    customers: Mutex<HashMap<String, Arc<Semaphore>>>,
    all: Semaphore,
    rescan: Notify,
    shutdown: Shutdown,
}

impl Deliverer {
    /// A deliverer with `cfg`'s secret, endpoints, CA file and delivery policy.
    pub fn new(
        db: Client,
        cfg: DunningConfig,
        shutdown: Shutdown,
    ) -> Result<Arc<Deliverer>, String> {
        let trust = match cfg.ca_file.as_str() {
            "" => None,
            path => Some(
                Trust::with_pem_file(std::path::Path::new(path))
                    .map_err(|e| format!("dunning.ca_file: {e}"))?,
            ),
        };
        Ok(Arc::new(Deliverer {
            db,
            cfg,
            trust,
            tracking: Mutex::default(),
            customers: Mutex::default(),
            all: Semaphore::new(CONCURRENT_ATTEMPTS_MAX),
            rescan: Notify::new(),
            shutdown,
        }))
    }

    fn tracking(&self) -> std::sync::MutexGuard<'_, Tracking> {
        self.tracking.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts delivering `n` (after `done` attempts, the last at `last_ms`) unless a task of
    /// this process has it or had it; whether it started.
    fn start(self: &Arc<Self>, n: log::Notification, done: u32, last_ms: i64) -> bool {
        {
            let mut t = self.tracking();
            if t.in_flight.contains(&n.notification_id) || t.finished.contains(&n.notification_id) {
                return false;
            }
            t.in_flight.insert(n.notification_id.clone());
        }
        tokio::spawn(self.clone().deliver(n, done, last_ms));
        true
    }

    /// Starts delivering each of `ns` (just recorded: no attempt yet).
    pub fn start_all(self: &Arc<Self>, ns: Vec<log::Notification>) {
        for n in ns {
            self.start(n, 0, 0);
        }
    }

    /// Notifications being delivered now.
    pub fn in_flight(&self) -> usize {
        self.tracking().in_flight.len()
    }

    /// Starts every undelivered spend alert notification of the log that has attempts left
    /// and no task here (after a restart: those recorded before it); returns how many.
    pub async fn scan(self: &Arc<Self>) -> Result<usize, clickhouse::error::Error> {
        let attempts = log::attempts(&self.db).await?;
        let mut started = 0;
        for n in log::undelivered(&self.db, &[KIND]).await? {
            let (done, last_ms) = attempts.get(&n.notification_id).copied().unwrap_or((0, 0));
            if done >= self.cfg.delivery_attempts_max {
                continue;
            }
            started += usize::from(self.start(n, done, last_ms));
        }
        Ok(started)
    }

    /// The attempts of one notification until it is delivered or out of attempts.
    async fn deliver(self: Arc<Self>, n: log::Notification, mut done: u32, mut last_ms: i64) {
        let id = n.notification_id.clone();
        let sending = Sending {
            secret: deliver::endpoint_secret(self.cfg.signing_secret.expose(), &n.customer),
            timeout: Duration::from_millis(self.cfg.delivery_timeout_ms),
            crossed_at_ms: serde_json::from_str::<serde_json::Value>(&n.body)
                .ok()
                .and_then(|b| {
                    b.pointer("/data/crossed_at_ms")
                        .and_then(serde_json::Value::as_i64)
                }),
        };
        let interrupted = loop {
            if done >= self.cfg.delivery_attempts_max {
                metrics::spend_alert_abandoned();
                tracing::warn!(notification_id = %id, attempts = done,
                    "spend alert notification not delivered: out of attempts");
                break false;
            }
            if !self.until_due(done, last_ms).await {
                break true;
            }
            match self.attempt(&n, &sending, done + 1).await {
                Turn::Failed { at_ms } => {
                    done += 1;
                    last_ms = at_ms;
                }
                Turn::Finished => break false,
                Turn::Interrupted => break true,
            }
        };
        let mut t = self.tracking();
        t.in_flight.remove(&id);
        if !interrupted {
            t.finished.insert(id);
        }
    }

    /// Waits until the attempt after `done` (the last at `last_ms`) is due; false when
    /// shutdown comes first.
    async fn until_due(&self, done: u32, last_ms: i64) -> bool {
        let due = schedule::next_attempt_ms(done, last_ms, self.cfg.delivery_backoff_secs);
        let wait = due.saturating_sub(now_ms());
        if wait > 0 {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())) => {}
            }
        }
        !self.shutdown.is_cancelled()
    }

    /// Attempt number `attempt` of `n`, one at a time per customer and within the process'
    /// bound, logged.
    async fn attempt(&self, n: &log::Notification, sending: &Sending, attempt: u32) -> Turn {
        let id = &n.notification_id;
        let customer = {
            let mut c = self.customers.lock().unwrap_or_else(|p| p.into_inner());
            c.entry(n.customer.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(1)))
                .clone()
        };
        let (Ok(_own), Ok(_any)) = (customer.acquire().await, self.all.acquire().await) else {
            return Turn::Finished;
        };
        if self.shutdown.is_cancelled() {
            return Turn::Interrupted;
        }
        let at_ms = now_ms();
        let started = Instant::now();
        let a = deliver::post(
            self.trust.as_ref(),
            &n.url,
            id,
            &n.body,
            &sending.secret,
            at_ms.div_euclid(1000),
            sending.timeout,
        )
        .await;
        metrics::delivery(
            if a.delivered { "delivered" } else { "failed" },
            started.elapsed(),
        );
        let row = log::Delivery::new(id, attempt, &n.url, &a, at_ms);
        if !self.append_delivery(&row).await {
            tracing::error!(notification_id = %id, attempt, delivered = a.delivered,
                "the delivery attempt could not be logged; not attempted again by this process");
            return Turn::Finished;
        }
        if a.delivered {
            if let Some(c) = sending.crossed_at_ms {
                metrics::spend_alert_delivered(now_ms().saturating_sub(c));
            }
            tracing::info!(notification_id = %id, attempt, status = a.status_code,
                "spend alert delivered");
            return Turn::Finished;
        }
        tracing::warn!(notification_id = %id, attempt, error = %a.error,
            "spend alert delivery failed");
        Turn::Failed { at_ms }
    }

    /// Appends an attempt, retried a few times (the attempt happened: losing its row would
    /// send it again after a restart).
    async fn append_delivery(&self, row: &log::Delivery) -> bool {
        for wait_secs in [1, 2, 4, 8] {
            match log::append_delivery(&self.db, row).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(notification_id = %row.notification_id, error = %e,
                        "logging a delivery attempt failed; retrying");
                    tokio::time::sleep(Duration::from_secs(wait_secs)).await;
                }
            }
        }
        log::append_delivery(&self.db, row).await.is_ok()
    }

    /// Scans at start, then every `dunning.interval_secs` and whenever a duplicate alert
    /// arrives, until shutdown.
    async fn scan_loop(self: Arc<Self>) {
        let every = Duration::from_secs(self.cfg.interval_secs.max(1));
        let mut ticker = Ticker::pausing(every, self.shutdown.clone());
        while ticker.next_or(self.rescan.notified()).await {
            match self.scan().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(started = n, "undelivered spend alert notifications resumed");
                }
                Err(e) => tracing::warn!(error = %e, "reading the spend alert delivery log failed"),
            }
        }
    }

    /// Waits until no attempt runs (at most `limit`).
    async fn idle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.in_flight() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The durable consumer, created if missing (from the start of the stream: alerts published
/// before payments first ran are sent too).
async fn open(js: &jetstream::Context, source: &AlertsSource) -> Result<pull::Stream, String> {
    let stream = js.get_stream(&source.stream).await.map_err(|e| {
        format!(
            "stream {} (declared by the spend deciders): {e}",
            source.stream
        )
    })?;
    let consumer = stream
        .get_or_create_consumer(
            &source.consumer,
            pull::Config {
                durable_name: Some(source.consumer.clone()),
                filter_subject: source.filter_subject(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", source.consumer))?;
    consumer
        .stream()
        .max_messages_per_batch(BATCH_MAX)
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| format!("consumer {}: {e}", source.consumer))
}

/// Handles a batch: malformed → terminal, each on its own; the rest recorded (or known) →
/// all acknowledged, then their deliveries started; the log unreachable → all redelivered
/// after a pause.
async fn handle(deliverer: &Arc<Deliverer>, source: &AlertsSource, batch: Vec<jetstream::Message>) {
    let mut alerts = Vec::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    for msg in batch {
        match parse(source, msg.subject.as_str(), &msg.payload) {
            Ok(a) => {
                alerts.push(a);
                messages.push(msg);
            }
            Err(e) => {
                metrics::spend_alert("malformed");
                tracing::warn!(subject = %msg.subject, error = %e, "spend alert refused");
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "terminating a malformed alert failed");
                }
            }
        }
    }
    if alerts.is_empty() {
        return;
    }
    match record_batch(deliverer, &alerts, now_ms()).await {
        Ok(recorded) => {
            for (((alert, _), msg), outcome) in alerts.iter().zip(&messages).zip(&recorded.outcomes)
            {
                metrics::spend_alert(outcome.label());
                if *outcome == Outcome::WithoutUrl {
                    tracing::debug!(customer = %alert.customer, alert_id = %alert.alert_id,
                        "no notification URL for the customer; spend alert not sent");
                }
                // lost acks only bring the message back: it is a duplicate then
                if let Err(e) = msg.ack().await {
                    tracing::warn!(alert_id = %alert.alert_id, error = %e, "acknowledging an alert failed");
                }
            }
            deliverer.start_all(recorded.new);
        }
        Err(e) => {
            tracing::warn!(alerts = alerts.len(), error = %e,
                "recording a batch of spend alerts failed; they come back");
            for msg in &messages {
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
            }
        }
    }
}

/// Consumes the alerts until shutdown, then waits (at most one delivery timeout) for the
/// attempts under way to be logged.
pub async fn run(
    js: jetstream::Context,
    source: AlertsSource,
    deliverer: Arc<Deliverer>,
    shutdown: Shutdown,
) {
    tokio::spawn(deliverer.clone().scan_loop());
    let mut backoff = Duration::from_millis(500);
    'open: loop {
        let mut batches = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = open(&js, &source) => match m {
                Ok(m) => {
                    tracing::info!(stream = %source.stream, consumer = %source.consumer,
                        "consuming spend alerts");
                    backoff = Duration::from_millis(500);
                    m.ready_chunks(BATCH_MAX)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot consume spend alerts yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                    continue;
                }
            },
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'open,
                n = batches.next() => n,
            };
            let Some(next) = next else { continue 'open };
            let mut batch = Vec::with_capacity(next.len());
            let mut failed = None;
            for m in next {
                match m {
                    Ok(msg) => batch.push(msg),
                    Err(e) => failed = Some(e),
                }
            }
            handle(&deliverer, &source, batch).await;
            if let Some(e) = failed {
                tracing::warn!(error = %e, "spend alert consumer error; reopening");
                continue 'open;
            }
        }
    }
    let limit = Duration::from_millis(deliverer.cfg.delivery_timeout_ms) + Duration::from_secs(1);
    deliverer.idle(limit).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> AlertsSource {
        AlertsSource::new(
            &NatsConfig::default(),
            &PaymentsConfig {
                spend_subject_root: "tally".into(),
                ..PaymentsConfig::default()
            },
        )
    }

    fn alert(customer: &str) -> serde_json::Value {
        serde_json::json!({
            "type": KIND, "alert_id": format!("{customer}.b1.1700000000000.80"),
            "customer": customer, "budget_id": "b1", "agent": null, "meter": "llm_tokens",
            "period_start_ms": 1_700_000_000_000i64, "period_end_ms": 1_702_592_000_000i64,
            "threshold": 80, "spent": "80.5", "limit": "100", "kind": "amount",
            "currency": "USD", "crossed_at_ms": 1_700_000_100_000i64
        })
    }

    #[test]
    fn names_come_from_nats_and_the_subject_root() {
        let s = source();
        assert_eq!(s.stream, "USAGE_ALERTS");
        assert_eq!(s.filter_subject(), "tally.alerts.>");
        assert_eq!(s.consumer, "payments-spend-alerts");
    }

    #[test]
    fn an_alert_parses_and_its_body_carries_it_whole() {
        let raw = alert("acme").to_string();
        let (a, object) = parse(&source(), "tally.alerts.acme", raw.as_bytes()).unwrap();
        assert_eq!(a.alert_id, "acme.b1.1700000000000.80");
        assert_eq!((a.threshold, a.crossed_at_ms), (80, 1_700_000_100_000));
        let id = notification_id(&a.alert_id);
        assert_eq!(id, "spend.threshold_crossed:acme.b1.1700000000000.80");
        let b: serde_json::Value =
            serde_json::from_str(&body(&id, &object, 1_700_000_100_999)).unwrap();
        assert_eq!(b["id"], id.as_str());
        assert_eq!(b["type"], KIND);
        assert_eq!(b["created"], 1_700_000_100);
        assert_eq!(b["data"], alert("acme"));
    }

    #[test]
    fn what_is_not_an_alert_of_the_subjects_customer_is_refused() {
        let s = source();
        let on = |subject: &str, v: serde_json::Value| parse(&s, subject, v.to_string().as_bytes());
        assert!(
            on("tally.alerts.globex", alert("acme")).is_err(),
            "another customer's subject"
        );
        assert!(on("tally.alerts.acme.x", alert("acme")).is_err());
        let mut wrong = alert("acme");
        wrong["type"] = "invoice.overdue".into();
        assert!(on("tally.alerts.acme", wrong).is_err());
        let mut no_id = alert("acme");
        no_id.as_object_mut().unwrap().remove("alert_id");
        assert!(on("tally.alerts.acme", no_id).is_err());
        let mut control = alert("acme");
        control["alert_id"] = "a\nb".into();
        assert!(on("tally.alerts.acme", control).is_err());
        assert!(parse(&s, "tally.alerts.acme", b"not json").is_err());
        let mut huge = alert("acme");
        huge["pad"] = "x".repeat(ALERT_BYTES_MAX).into();
        assert!(on("tally.alerts.acme", huge).is_err());
    }

    fn parsed(customer: &str, budget: &str) -> Alert {
        let mut v = alert(customer);
        v["alert_id"] = format!("{customer}.{budget}.1700000000000.80").into();
        v["budget_id"] = budget.into();
        let raw = v.to_string();
        parse(
            &source(),
            &format!("tally.alerts.{customer}"),
            raw.as_bytes(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn a_batch_records_each_new_alert_once_and_nothing_known_or_without_url() {
        let endpoints: BTreeMap<String, String> = ["acme", "globex"]
            .into_iter()
            .map(|c| (c.to_owned(), format!("https://hooks.example/{c}")))
            .collect();
        let batch = [
            parsed("acme", "b1"),
            parsed("globex", "b1"),
            parsed("hooli", "b1"),  // no URL
            parsed("acme", "b1"),   // again in the same batch
            parsed("acme", "b2"),   // in the log already
            parsed("globex", "b2"), // its id is known, but for another customer
        ];
        let known: HashSet<(String, String)> = [
            (
                "acme".to_owned(),
                notification_id("acme.b2.1700000000000.80"),
            ),
            (
                "acme".to_owned(),
                notification_id("globex.b2.1700000000000.80"),
            ),
        ]
        .into_iter()
        .collect();
        let refs: Vec<&Alert> = batch.iter().collect();
        let id = |s: &str| notification_id(&format!("{s}.1700000000000.80"));
        assert_eq!(
            plan(&refs, &endpoints, known),
            vec![
                Outcome::Recorded(id("acme.b1")),
                Outcome::Recorded(id("globex.b1")),
                Outcome::WithoutUrl,
                Outcome::Duplicate(id("acme.b1")),
                Outcome::Duplicate(id("acme.b2")),
                Outcome::Recorded(id("globex.b2")),
            ]
        );
        assert!(plan(&[], &endpoints, HashSet::new()).is_empty());
        // everything known: nothing recorded
        let all: HashSet<(String, String)> = batch
            .iter()
            .map(|a| (a.customer.clone(), notification_id(&a.alert_id)))
            .collect();
        assert!(plan(&refs, &endpoints, all)
            .iter()
            .all(|o| !matches!(o, Outcome::Recorded(_))));
    }
}
