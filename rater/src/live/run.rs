//! A spend decider's life: wait for the partition's lease (a standby until then), rebuild
//! the book, answer on NATS while the feed keeps it current, and rebuild or stand by again
//! when the book can no longer be trusted (a counted batch was aborted, the feed was lost) or
//! the partition was taken over.
//!
//! The rebuild reads, in this order: the catalog, the meters and the budgets; the usage plan
//! (sealed days); the join point from the aggregator's lease key; storage up to the join
//! point (`usage::Request::through`); the holds journal. The feed is then read from just
//! before the join point was written, and only batches after it are applied, so every batch
//! counts once. It owns the session's tasks and their shutdown; decisions are the decider's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use clickhouse::Client;
use futures::StreamExt;
use tally_platform::feed::{self, FeedConfig, JoinPoint};
use tally_platform::lease::{Lease, LeaseConfig, LeaseError};
use tally_platform::shutdown::Shutdown;
use tally_platform::usage::{self, Request as UsageRequest, Resolution, Scope, Through};
use tally_platform::NatsConfig;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::alerts::{Alerts, AlertsConfig};
use super::book::{self, Book};
use super::budget;
use super::config::SpendConfig;
use super::decider::{self, Chunks, Command, Decider, ReplyTo, Stop};
use super::journal::{Journal, JournalConfig};
use super::metrics;
use super::protocol::{self, Answer, Reason};
use super::wallet;
use crate::catalog::Catalog;
use crate::store::CatalogSource;

/// Requests waiting for the decider; beyond this an authorize is answered `unavailable`.
const QUEUE: usize = 8192;

/// Feed notices are read from this long before the join point was written (clock skew
/// between the JetStream servers of the lease bucket and of the feed).
const FEED_MARGIN_MS: i64 = 30_000;

/// Why a session could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("lease: {0}")]
    Lease(#[from] LeaseError),
    #[error("catalog: {0}")]
    Catalog(#[from] crate::store::CatalogStoreError),
    #[error("clickhouse: {0}")]
    Store(#[from] clickhouse::error::Error),
    #[error("feed: {0}")]
    Feed(#[from] feed::FeedError),
    #[error("journal: {0}")]
    Journal(#[from] super::journal::JournalError),
    #[error("nats: {0}")]
    Nats(String),
}

/// Everything a decider needs from outside.
#[derive(Clone)]
pub struct Spend {
    pub db: Client,
    pub nats: async_nats::Client,
    pub nats_cfg: NatsConfig,
    pub cfg: SpendConfig,
    pub source: CatalogSource,
    pub now_ms: fn() -> i64,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Shutdown,
    Fenced,
    Rebuild(&'static str),
}

impl Spend {
    fn js(&self) -> jetstream::Context {
        jetstream::new(self.nats.clone())
    }

    fn lease_config(&self) -> LeaseConfig {
        LeaseConfig {
            bucket: format!("{}_SPEND", self.nats_cfg.stream),
            key: self.cfg.lease_key(),
            ttl: Duration::from_secs(self.cfg.lease_secs),
            replicas: self.cfg.replicas,
            metrics_prefix: "tally_spend",
        }
    }

    fn journal_config(&self) -> JournalConfig {
        let life =
            Duration::from_millis(self.cfg.hold_max_ms.saturating_add(self.cfg.hold_grace_ms));
        JournalConfig::for_nats(&self.nats_cfg, life, self.cfg.replicas)
    }

    /// Whether `customer` belongs to this decider's partition.
    fn mine(&self, customer: &str) -> bool {
        self.nats_cfg
            .partition_of(customer)
            .is_none_or(|p| p == self.cfg.part())
    }
}

/// Runs until `shutdown`: stands by for the partition, then serves it (see the module docs).
pub async fn run(spend: Spend, shutdown: Shutdown) -> Result<(), RunError> {
    metrics::init();
    let js = spend.js();
    let holder = format!("{}/{}", spend.cfg.lease_key(), uuid::Uuid::new_v4());
    loop {
        metrics::ready(false);
        let (lease, takeover) =
            match Lease::acquire(&js, spend.lease_config(), holder.clone(), &shutdown).await {
                Ok(l) => l,
                Err(LeaseError::Shutdown) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
        let lease = Arc::new(lease);
        tracing::info!(partition = spend.cfg.part(), previous = ?takeover.previous, "spend partition taken");
        let renew_stop = Shutdown::new();
        let renewing = {
            let (lease, stop) = (lease.clone(), renew_stop.clone());
            tokio::spawn(async move { lease.keep_renewed(stop).await })
        };
        if takeover.previous.is_some() {
            // a previous holder answers until its next renewal finds it fenced: let it see
            // that before its journal is read, so no hold it placed is missed
            let wait = Duration::from_secs(spend.cfg.lease_secs) / 4 + Duration::from_secs(1);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let outcome = loop {
            if shutdown.is_cancelled() {
                break Outcome::Shutdown;
            }
            match session(&spend, &lease, &shutdown).await {
                Ok(Outcome::Rebuild(cause)) => {
                    metrics::rebuild(cause);
                    tracing::warn!(cause, "rebuilding the live book");
                }
                Ok(o) => break o,
                Err(e) => {
                    metrics::rebuild("error");
                    tracing::warn!(error = %e, "spend session failed; rebuilding");
                    let fenced = lease.fenced();
                    tokio::select! {
                        _ = shutdown.cancelled() => break Outcome::Shutdown,
                        _ = fenced.cancelled() => break Outcome::Fenced,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        metrics::ready(false);
        renew_stop.cancel();
        let _ = renewing.await;
        match outcome {
            Outcome::Shutdown => {
                lease.release().await;
                return Ok(());
            }
            Outcome::Fenced => tracing::warn!("the spend partition was taken over; standing by"),
            Outcome::Rebuild(_) => {}
        }
    }
}

/// The tasks of one session, stopped together.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// One rebuild and the serving that follows it.
async fn session(spend: &Spend, lease: &Lease, shutdown: &Shutdown) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let js = spend.js();
    let part = spend.cfg.part();
    let (book, catalog, join) = rebuild(spend, &js).await?;
    let journal = Journal::open(&js, spend.journal_config(), part).await?;
    let mut book = book;
    let now = (spend.now_ms)();
    let holds = journal.replay().await?;
    let restored = holds.len();
    for h in holds {
        book.restore(&catalog, h, now);
    }
    let aborted = aborts(&spend.db, part).await?;
    let wallets = session_wallets(&spend.db, &book.budgets).await;
    let alerts = session_alerts(spend, &js).await;
    let customers = book.customers.len();
    let (tx, rx) = mpsc::channel(QUEUE);
    let decider = Decider {
        book,
        catalog,
        journal,
        alerts,
        client: spend.nats.clone(),
        committed_through: join.committed_through,
        applied: super::decider::Applied::default(),
        aborted,
        hold_grace_ms: spend.cfg.hold_grace_ms,
        now_ms: spend.now_ms,
        wallets,
        wallet_unreadable: BTreeSet::new(),
    };
    let mut deciding = tokio::spawn(decider.run(rx));
    let mut feeding = tokio::spawn(follow_feed(spend.clone(), join, tx.clone()));
    let tasks = Tasks(vec![
        tokio::spawn(answer_authorize(spend.clone(), tx.clone())),
        tokio::spawn(answer_balance(spend.clone(), tx.clone())),
        tokio::spawn(refresh(spend.clone(), tx.clone())),
        tokio::spawn(poll_aborts(spend.clone(), tx.clone())),
    ]);
    drop(tx);
    metrics::customers(customers);
    metrics::ready(true);
    tracing::info!(
        partition = part,
        customers,
        holds = restored,
        committed_through = join.committed_through,
        took_ms = started.elapsed().as_millis() as u64,
        "live book rebuilt; answering"
    );
    let fenced = lease.fenced();
    let outcome = tokio::select! {
        _ = shutdown.cancelled() => Outcome::Shutdown,
        _ = fenced.cancelled() => Outcome::Fenced,
        r = &mut deciding => match r {
            Ok((Stop::Rebuild, _)) => Outcome::Rebuild("aborted_batch"),
            Ok((Stop::Done, _)) => Outcome::Rebuild("decider_stopped"),
            Err(e) => {
                tracing::error!(error = %e, "the decider failed");
                Outcome::Rebuild("decider_failed")
            }
        },
        _ = &mut feeding => Outcome::Rebuild("feed_lost"),
    };
    metrics::ready(false);
    drop(tasks);
    feeding.abort();
    deciding.abort();
    Ok(outcome)
}

/// The wallets of the session's wallet budgets. A wallet that cannot be read now holds its
/// wallet budgets at 0 (they deny) until the next refresh reads it; the session goes on.
async fn session_wallets(
    db: &Client,
    budgets: &BTreeMap<String, Vec<budget::Budget>>,
) -> BTreeMap<String, wallet::Wallet> {
    match load_wallets(db, budgets).await {
        Ok(w) => w,
        Err(e) => {
            metrics::wallet_reload_failed();
            tracing::warn!(error = %e, "wallets not read; wallet budgets hold 0 until the next refresh");
            BTreeMap::new()
        }
    }
}

/// The session's threshold alerts; none (logged) when they cannot be opened: thresholds
/// are then notified after the next rebuild.
async fn session_alerts(spend: &Spend, js: &jetstream::Context) -> Option<Alerts> {
    match Alerts::open(
        js,
        &spend.db,
        AlertsConfig::new(&spend.nats_cfg, &spend.cfg.subject_root, spend.cfg.replicas),
    )
    .await
    {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, "alerts unavailable this session; thresholds are notified after the next rebuild");
            None
        }
    }
}

/// The book as storage holds it up to the join point, with the catalog it was priced with.
async fn rebuild(
    spend: &Spend,
    js: &jetstream::Context,
) -> Result<(Book, Catalog, JoinPoint), RunError> {
    let db = &spend.db;
    let catalog = spend.source.current(db).await?;
    let mut book = Book::default();
    book.meters = meter_aggregations(db).await?;
    book.budgets = budget::load(db).await?;
    book.max_holds_per_customer =
        Some(usize::try_from(spend.cfg.max_holds_per_customer).unwrap_or(usize::MAX));
    let now = (spend.now_ms)();
    let from_ms = book::live_from_ms(&catalog, now);
    // the plan before the join point: every seal it names holds batches committed before
    let from = from_ms.map_or(0, |ms| u32::try_from(ms.max(0) / 1000).unwrap_or(u32::MAX));
    let plan = usage::plan(db, from).await?;
    let join = settled_join_point(spend, js).await?;
    if from_ms.is_some() {
        let to = u32::try_from(now / 1000 + 86_400).unwrap_or(u32::MAX);
        let req = UsageRequest {
            from,
            to,
            scope: Scope::All,
            meter: None,
            by_agent: true,
            resolution: Resolution::Days,
            split: &[],
            months_except: None,
            through: Some(Through {
                part: spend.cfg.part(),
                bseq_max: join.committed_through,
            }),
        };
        let rows = usage::read_each(db, &plan, &req, |row| {
            book.add_row_unpriced(&catalog, &row);
        })
        .await?;
        tracing::debug!(rows, "usage read for the live book");
    }
    book.reprice_all(&catalog);
    Ok((book, catalog, join))
}

/// The join point once no batch is in flight (batches take well under a second; an
/// aggregator renewing its lease during a long batch moves the key's revision past the batch's
/// sequence). After 10 s of a batch in flight, the revision before it, with a warning.
async fn settled_join_point(spend: &Spend, js: &jetstream::Context) -> Result<JoinPoint, RunError> {
    let bucket = format!("{}_AGGREGATORS", spend.nats_cfg.stream);
    let key = spend.cfg.aggregator_consumer_name();
    let started = Instant::now();
    loop {
        let join = feed::join_point(js, &bucket, &key).await?;
        if !join.in_flight {
            return Ok(join);
        }
        if started.elapsed() > Duration::from_secs(10) {
            tracing::warn!(
                committed_through = join.committed_through,
                "a batch stayed in flight for 10 s; joining before it"
            );
            return Ok(join);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn meter_aggregations(
    db: &Client,
) -> Result<HashMap<String, tally_domain::Aggregation>, RunError> {
    Ok(crate::store::registry::meters(db)
        .await?
        .into_iter()
        .map(|m| (m.slug.to_string(), m.aggregation))
        .collect())
}

/// Batches of the partition aborted within the feed's retention (the only ones a decider
/// may have counted).
async fn aborts(db: &Client, part: u32) -> Result<HashSet<String>, RunError> {
    let ids: Vec<String> = db
        .query(
            "SELECT batch_id FROM usage_aborts WHERE part = ? \
             AND aborted_at >= now() - INTERVAL 2 HOUR",
        )
        .bind(part)
        .fetch_all()
        .await?;
    Ok(ids.into_iter().collect())
}

/// Reads the partition's feed from just before the join point and hands each complete
/// batch to the decider (which skips those at or before the join point). Ends when the feed
/// cannot be read on: the session rebuilds.
async fn follow_feed(spend: Spend, join: JoinPoint, tx: mpsc::Sender<Command>) {
    let js = spend.js();
    // the aggregators' feed, as they declare it (its replicas are `nats.replicas`)
    let cfg = FeedConfig::for_nats(&spend.nats_cfg);
    let deliver_policy = match join.since_ms {
        Some(ms) => {
            let at = i128::from(ms.saturating_sub(FEED_MARGIN_MS)) * 1_000_000;
            match time::OffsetDateTime::from_unix_timestamp_nanos(at) {
                Ok(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
                Err(_) => consumer::DeliverPolicy::All,
            }
        }
        None => consumer::DeliverPolicy::All,
    };
    let stream = match feed::ensure(&js, &cfg).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "the live feed is not readable");
            return;
        }
    };
    let consumer = match stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: cfg.subject(spend.cfg.part()),
            deliver_policy,
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the live feed");
            return;
        }
    };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the live feed");
            return;
        }
    };
    let mut chunks = Chunks::default();
    while let Some(msg) = messages.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "the live feed broke off");
                return;
            }
        };
        if let Ok(info) = msg.info() {
            let published = info.published.unix_timestamp_nanos() / 1_000_000;
            let lag = i128::from((spend.now_ms)()) - published;
            metrics::feed_lag(Duration::from_millis(
                u64::try_from(lag.max(0)).unwrap_or(0),
            ));
        }
        match feed::parse(&msg.payload) {
            Ok(n) if n.part == spend.cfg.part() => {
                if let Some(batch) = chunks.add(n) {
                    if tx.send(Command::Batch(batch)).await.is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "unreadable feed notice skipped"),
        }
    }
}

/// Whether a requester's reply subject is a reply inbox: answers go nowhere else (a request
/// naming a JetStream API or another customer's subject as its reply gets no answer).
fn is_inbox(reply: &str) -> bool {
    reply.starts_with("_INBOX.") && !reply.contains(['*', '>', ' '])
}

/// The customer and agent tokens of `<root>.authorize.<customer>.<agent>`.
fn authorize_tokens<'s>(root: &str, subject: &'s str) -> Option<(&'s str, &'s str)> {
    let rest = subject.strip_prefix(root)?.strip_prefix(".authorize.")?;
    let (customer, agent) = rest.split_once('.')?;
    (!agent.contains('.')).then_some((customer, agent))
}

/// Answers `<root>.authorize.<customer>.<agent>` for the partition's customers: malformed
/// requests at once, the rest through the decider.
async fn answer_authorize(spend: Spend, tx: mpsc::Sender<Command>) {
    let root = spend.cfg.subject_root.clone();
    let mut sub = match spend.nats.subscribe(format!("{root}.authorize.*.*")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to authorize requests");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let received = Instant::now();
        let Some(reply) = msg.reply.clone().filter(|r| is_inbox(r.as_str())) else {
            continue;
        };
        let Some((customer, agent)) = authorize_tokens(&root, msg.subject.as_str()) else {
            continue;
        };
        if !spend.mine(customer) {
            continue;
        }
        let request = match protocol::parse(
            customer,
            agent,
            &msg.payload,
            spend.cfg.hold_default_ms,
            spend.cfg.hold_max_ms,
        ) {
            Ok(r) => r,
            Err(answer) => {
                metrics::decided("authorize", answer.reason, received.elapsed());
                decider::send(&spend.nats, ReplyTo::Nats(reply), answer).await;
                continue;
            }
        };
        let cmd = Command::Request {
            request,
            reply: ReplyTo::Nats(reply.clone()),
            received,
        };
        if let Err(e) = tx.try_send(cmd) {
            if matches!(e, mpsc::error::TrySendError::Closed(_)) {
                return;
            }
            let answer = Answer::deny(Reason::Unavailable, "the decider is overloaded");
            metrics::decided("authorize", answer.reason, received.elapsed());
            decider::send(&spend.nats, ReplyTo::Nats(reply), answer).await;
        }
    }
}

/// Answers `<root>.balance.<customer>` with the customer's balance (JSON), or
/// `{"error": "unknown_customer"}`.
async fn answer_balance(spend: Spend, tx: mpsc::Sender<Command>) {
    let prefix = format!("{}.balance.", spend.cfg.subject_root);
    let mut sub = match spend.nats.subscribe(format!("{prefix}*")).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to balance requests");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone().filter(|r| is_inbox(r.as_str())) else {
            continue;
        };
        let Some(customer) = msg.subject.as_str().strip_prefix(&prefix) else {
            continue;
        };
        if !spend.mine(customer) {
            continue;
        }
        let (otx, orx) = oneshot::channel();
        let cmd = Command::Balance {
            customer: customer.to_owned(),
            reply: otx,
        };
        if tx.send(cmd).await.is_err() {
            return;
        }
        let body = match orx.await {
            Ok(Some(b)) => serde_json::to_vec(&b).unwrap_or_default(),
            Ok(None) => br#"{"error":"unknown_customer"}"#.to_vec(),
            Err(_) => br#"{"error":"unavailable"}"#.to_vec(),
        };
        if let Err(e) = spend.nats.publish(reply, body.into()).await {
            tracing::warn!(error = %e, "balance not sent");
        }
    }
}

/// The catalog as stored now, or `None` when what it is built from (plans, subscriptions,
/// meters, rates, and what was set aside or quarantined while reading them) is what `watch`
/// saw last: the decider then keeps its catalog and does not reprice every customer.
async fn changed_catalog(
    spend: &Spend,
    watch: &mut CatalogWatch,
) -> Result<Option<Catalog>, crate::store::CatalogStoreError> {
    let stored = crate::store::Stored::load(&spend.db).await?;
    let records = crate::store::catalog::load_records(&spend.db).await?;
    catalog_if_changed(&spend.source, watch, records, &stored)
}

/// The stored catalog of `records` ([`CatalogSource::build_records`], the same build as the
/// rating pass's, so a customer quarantined there is quarantined here: denied, never priced
/// on what was left of its records or on the default plan), or `None` when `records` and
/// `stored` are what `watch` saw last.
fn catalog_if_changed(
    source: &CatalogSource,
    watch: &mut CatalogWatch,
    records: crate::store::catalog::StoredRecords,
    stored: &crate::store::Stored,
) -> Result<Option<Catalog>, crate::store::CatalogStoreError> {
    if !watch.changed(&(&records, stored)) {
        return Ok(None);
    }
    match source.build_records(records, stored) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            // not built: the next refresh tries the same inputs again
            watch.forget();
            Err(e)
        }
    }
}

/// What the last catalog was built from (a hash of its inputs' debug form; a map in them
/// whose order differs between reads only costs a repricing).
#[derive(Debug, Default)]
pub struct CatalogWatch {
    last: Option<u64>,
}

impl CatalogWatch {
    /// Whether `inputs` differ from the last ones offered (the first ones do); remembers them.
    pub fn changed(&mut self, inputs: &impl std::fmt::Debug) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{inputs:?}").hash(&mut h);
        let now = Some(h.finish());
        let changed = self.last != now;
        self.last = now;
        changed
    }

    /// Forgets the last inputs (the next ones count as changed).
    pub fn forget(&mut self) {
        self.last = None;
    }
}

/// Reloads the catalog (when it changed), the meters and the budgets every `refresh_secs`.
async fn refresh(spend: Spend, tx: mpsc::Sender<Command>) {
    let every = Duration::from_secs(spend.cfg.refresh_secs);
    let mut watch = CatalogWatch::default();
    loop {
        tokio::time::sleep(every).await;
        match changed_catalog(&spend, &mut watch).await {
            Ok(Some(c)) => {
                if tx.send(Command::Catalog(Box::new(c))).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "catalog reload failed; keeping the last"),
        }
        match meter_aggregations(&spend.db).await {
            Ok(m) => {
                if tx.send(Command::Meters(m)).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "meter reload failed; keeping the last"),
        }
        match budget::load(&spend.db).await {
            Ok(b) => {
                // wallets after budgets: the decider keeps the last wallets when this fails
                let wallets = load_wallets(&spend.db, &b).await;
                if tx.send(Command::Budgets(b)).await.is_err() {
                    return;
                }
                match wallets {
                    Ok(w) => {
                        if tx.send(Command::Wallets(w)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        metrics::wallet_reload_failed();
                        tracing::warn!(error = %e, "wallet reload failed; keeping the last");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "budget reload failed; keeping the last"),
        }
    }
}

/// The wallets of the customers that have a wallet budget (only theirs are read).
async fn load_wallets(
    db: &clickhouse::Client,
    budgets: &BTreeMap<String, Vec<budget::Budget>>,
) -> Result<BTreeMap<String, wallet::Wallet>, clickhouse::error::Error> {
    let customers: BTreeSet<String> = budgets
        .iter()
        .filter(|(_, bs)| bs.iter().any(|b| b.kind == budget::Kind::Wallet))
        .map(|(c, _)| c.clone())
        .collect();
    wallet::load(db, &customers).await
}

/// Reads the partition's recent aborts every `aborts_poll_ms`.
async fn poll_aborts(spend: Spend, tx: mpsc::Sender<Command>) {
    let every = Duration::from_millis(spend.cfg.aborts_poll_ms);
    loop {
        tokio::time::sleep(every).await;
        match aborts(&spend.db, spend.cfg.part()).await {
            Ok(ids) => {
                if tx.send(Command::Aborts(ids)).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading aborts failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refresh rebuilds (and the decider reprices) only when the catalog's inputs
    /// changed; a build that failed is tried again.
    #[test]
    fn an_unchanged_catalog_is_not_sent_again() {
        let mut watch = CatalogWatch::default();
        let plans = vec![("p", 1, "0.001")];
        assert!(watch.changed(&plans), "the first catalog is new");
        assert!(!watch.changed(&plans.clone()), "the same inputs");
        let changed = vec![("p", 1, "0.001"), ("p", 2, "0.002")];
        assert!(watch.changed(&changed));
        assert!(!watch.changed(&changed));
        watch.forget();
        assert!(watch.changed(&changed), "after a failed build");
    }

    /// Issue 17: a customer with a stored subscription record that no longer reads is
    /// quarantined by the pass's build; the live refresh builds the same catalog, so its
    /// agents are denied instead of priced on what was left of its records (or on the
    /// default plan). On the old refresh (records without their conflicts) it was allowed.
    #[test]
    fn a_refreshed_catalog_keeps_a_quarantined_customer_denied() {
        use crate::catalog::conflicts::{Conflict, ConflictKind, Outcome};
        let meters: Vec<tally_domain::meter::MeterSpec> = serde_json::from_str(
            r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n"}]"#,
        )
        .expect("meters");
        let plans = serde_json::from_str(
            r#"[{"id":"p","version":1,"currency":"USD","effective_from":"2020-01-01T00:00:00Z",
                 "prices":[{"model":"per_unit","meter":"tokens","unit_price":"0.001"}]}]"#,
        )
        .expect("plans");
        let subscriptions =
            serde_json::from_str(r#"[{"customer":"acme","plan":"p"}]"#).expect("a record");
        let records = crate::store::catalog::StoredRecords {
            plans,
            subscriptions,
            conflicts: vec![Conflict {
                kind: ConflictKind::Subscription,
                outcome: Outcome::Quarantined,
                identity: "acme".into(),
                detail: "stored subscription of acme: the body does not parse".into(),
            }],
        };
        let stored = crate::store::Stored {
            meters: tally_domain::meter::validate_meters(meters).expect("valid"),
            ..Default::default()
        };
        let source = CatalogSource {
            rater: crate::config::RaterConfig {
                default_plan: Some("p".into()),
                ..Default::default()
            },
            features: tally_platform::Features::default(),
        };
        let mut watch = CatalogWatch::default();
        let catalog = catalog_if_changed(&source, &mut watch, records.clone(), &stored)
            .expect("builds")
            .expect("the first catalog");
        assert!(catalog.quarantine_of("acme").is_some());
        let mut book = Book::default();
        book.meters
            .insert("tokens".into(), tally_domain::Aggregation::Sum);
        let acme = tally_domain::CustomerId::new("acme").expect("id");
        let group = BTreeMap::new();
        let ask = book::Ask {
            customer: &acme,
            agent: "bot",
            meter: "tokens",
            quantity: rust_decimal::Decimal::ONE,
            group: &group,
            hold_id: "h".into(),
            expires_at_ms: 1_795_651_260_000,
        };
        let (answer, hold) = book.authorize(&catalog, &ask, 1_795_651_200_000);
        assert!(!answer.allow && hold.is_none(), "{answer:?}");
        assert_eq!(answer.reason, Some(Reason::UnknownCustomer));
        let detail = answer.detail.unwrap_or_default();
        assert!(detail.contains("catalog records conflict"), "{detail}");
        // the same records and rates again: not rebuilt
        let again = catalog_if_changed(&source, &mut watch, records, &stored).expect("read");
        assert!(again.is_none());
    }

    #[test]
    fn authorize_subjects_name_a_customer_and_an_agent() {
        assert_eq!(
            authorize_tokens("tally", "tally.authorize.acme.bot-1"),
            Some(("acme", "bot-1"))
        );
        assert_eq!(authorize_tokens("tally", "tally.authorize.acme"), None);
        assert_eq!(authorize_tokens("tally", "tally.authorize.acme.a.b"), None);
        assert_eq!(authorize_tokens("tally", "other.authorize.acme.a"), None);
        assert_eq!(authorize_tokens("tally", "tallyx.authorize.acme.a"), None);
    }

    #[test]
    fn answers_go_only_to_reply_inboxes() {
        assert!(is_inbox("_INBOX.agent-acme.abc.1"));
        assert!(is_inbox("_INBOX.xyz"));
        for bad in [
            "$JS.API.STREAM.DELETE.USAGE",
            "usage.globex.bot",
            "_INBOX.>",
            "$KV.USAGE_AGGREGATORS.aggregator",
            "_INBOXx",
        ] {
            assert!(!is_inbox(bad), "{bad}");
        }
    }
}
