//! The decider: one task that owns a partition's live book and takes, one at a time, the
//! authorize and release requests, the feed's committed batches, hold expiry, catalog and
//! budget reloads, and balance questions. Being the only owner makes every decision see every
//! hold placed before it.
//!
//! An allowed request's hold is written to the journal and the answer is sent only once
//! JetStream stored it (the hold is in the book at once, so the next request sees it); if
//! the journal refuses, the hold is dropped and the agent is told `unavailable`. Committed
//! batches settle the holds their events name and may cross budget thresholds, which are
//! notified in the background ([`super::alerts`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Serialize;
use tally_domain::Period;
use tally_platform::feed::Notice;
use tokio::sync::{mpsc, oneshot};

use super::alerts::Alerts;
use super::book::{Ask, Book, Costs, Hold, Settled};
use super::budget::{Budget, Kind};
use super::journal::{Journal, Record};
use super::metrics;
use super::protocol::{Answer, Reason, Request};
use super::wallet::{self, Wallet};
use crate::catalog::Catalog;

/// Where an answer goes.
pub enum ReplyTo {
    /// A NATS reply subject.
    Nats(async_nats::Subject),
    /// An in-process caller (HTTP, tests).
    Channel(oneshot::Sender<Answer>),
}

/// What the decider is asked to do.
pub enum Command {
    Request {
        request: Request,
        reply: ReplyTo,
        received: std::time::Instant,
    },
    /// A committed batch (all its chunks).
    Batch(Vec<Notice>),
    /// Batch ids recorded as aborted.
    Aborts(HashSet<String>),
    Catalog(Box<Catalog>),
    /// The declared meters (slug to aggregation).
    Meters(HashMap<String, tally_domain::Aggregation>),
    Budgets(BTreeMap<String, Vec<Budget>>),
    /// The prepaid wallets of the customers with a wallet budget.
    Wallets(BTreeMap<String, Wallet>),
    Balance {
        customer: String,
        reply: oneshot::Sender<Option<Balance>>,
    },
}

/// Why the decider stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Shut down, or the partition was lost.
    Done,
    /// A batch it counted was aborted: the book must be rebuilt from storage.
    Rebuild,
}

/// A customer's live balance (`<root>.balance.<customer>`, `GET /v1/customers/{id}/balance`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balance {
    pub customer: String,
    pub period_start: String,
    pub period_end: String,
    pub currency: Option<String>,
    /// Usage charges of the period so far, before tax.
    pub spend: Decimal,
    pub meters: BTreeMap<String, MeterBalance>,
    pub agents: BTreeMap<String, BTreeMap<String, MeterBalance>>,
    pub holds: usize,
    pub held_amount: Decimal,
    pub budgets: Vec<BudgetBalance>,
    /// The plan's features and metered limits with their use this period.
    pub entitlements: super::book::EntitlementUse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeterBalance {
    pub quantity: Decimal,
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetBalance {
    pub budget_id: String,
    pub agent: Option<String>,
    pub meter: Option<String>,
    pub kind: Kind,
    pub limit: Decimal,
    pub spent: Decimal,
    pub held: Decimal,
    pub remaining: Decimal,
    pub hard: bool,
}

/// The decider's state besides the book.
pub struct Decider {
    pub book: Book,
    pub catalog: Catalog,
    pub journal: Journal,
    pub alerts: Option<Alerts>,
    pub client: async_nats::Client,
    /// Only batches above this sequence come from the feed (storage had the rest).
    pub committed_through: u64,
    /// The latest batches applied from the feed (to skip a repeat).
    pub applied: Applied,
    /// Batches known aborted.
    pub aborted: HashSet<String>,
    pub hold_grace_ms: u64,
    pub now_ms: fn() -> i64,
    /// The wallets the wallet budgets' limits come from.
    pub wallets: BTreeMap<String, Wallet>,
    /// Customers whose wallet could not be read (warned once until it reads again).
    pub wallet_unreadable: std::collections::BTreeSet<String>,
}

impl Decider {
    /// Runs until `rx` closes (shutdown, fencing) or a rebuild is needed.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) -> (Stop, Book) {
        self.fill_wallet_limits();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cmd = tokio::select! {
                c = rx.recv() => c,
                _ = tick.tick() => {
                    let expired = self.book.expire((self.now_ms)());
                    metrics::holds_expired(expired.len());
                    metrics::holds_active(self.book.holds_active());
                    continue;
                }
            };
            let Some(cmd) = cmd else {
                return (Stop::Done, self.book);
            };
            if self.handle(cmd).await == Some(Stop::Rebuild) {
                return (Stop::Rebuild, self.book);
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> Option<Stop> {
        match cmd {
            Command::Request {
                request,
                reply,
                received,
            } => self.request(request, reply, received).await,
            Command::Batch(notices) => return self.batch(notices).await,
            Command::Aborts(ids) => {
                // a batch aborted after the rebuild read storage may be in the book (read in
                // part while in flight, or applied from the feed): rebuild from storage
                if ids.iter().any(|id| !self.aborted.contains(id)) {
                    tracing::warn!(
                        "a batch counted from the feed was aborted: rebuilding from storage"
                    );
                    metrics::rebuild("aborted_batch");
                    return Some(Stop::Rebuild);
                }
                self.aborted = ids;
            }
            Command::Catalog(c) => {
                self.catalog = *c;
                self.book.reprice_all(&self.catalog);
            }
            Command::Meters(m) => self.book.meters = m,
            Command::Budgets(b) => {
                self.book.budgets = b;
                self.fill_wallet_limits();
                let customers: Vec<String> = self.book.customers.keys().cloned().collect();
                for customer in customers {
                    self.notify_crossings(&customer);
                }
            }
            Command::Wallets(w) => {
                self.wallets = w;
                self.fill_wallet_limits();
                let customers: Vec<String> = self.wallets.keys().cloned().collect();
                for customer in customers {
                    self.notify_crossings(&customer);
                }
            }
            Command::Balance { customer, reply } => {
                let _ = reply.send(self.balance(&customer));
            }
        }
        None
    }

    async fn request(&mut self, request: Request, reply: ReplyTo, received: std::time::Instant) {
        let now = (self.now_ms)();
        match request {
            Request::Release {
                customer,
                agent,
                hold,
            } => {
                let answer = match self
                    .book
                    .release_by(customer.as_str(), agent.as_str(), &hold)
                {
                    Some(h) => {
                        self.journal_release(&h).await;
                        Answer {
                            allow: true,
                            hold_id: Some(h.id),
                            remaining: None,
                            currency: None,
                            reason: None,
                            detail: None,
                        }
                    }
                    None => Answer::deny(Reason::UnknownHold, format!("hold {hold}")),
                };
                metrics::decided("release", answer.reason, received.elapsed());
                send(&self.client, reply, answer).await;
            }
            Request::Feature { customer, feature } => {
                let answer = self.book.feature(&self.catalog, &customer, &feature, now);
                metrics::decided("feature", answer.reason, received.elapsed());
                send(&self.client, reply, answer).await;
            }
            Request::Authorize {
                customer,
                agent,
                meter,
                quantity,
                group,
                deadline_ms,
                request_id,
            } => {
                let ask = Ask {
                    customer: &customer,
                    agent: agent.as_str(),
                    meter: &meter,
                    quantity,
                    group: &group,
                    hold_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                    expires_at_ms: now
                        .saturating_add(i64::try_from(deadline_ms).unwrap_or(i64::MAX / 4))
                        .saturating_add(i64::try_from(self.hold_grace_ms).unwrap_or(0)),
                };
                let (answer, hold) = self.book.authorize(&self.catalog, &ask, now);
                let Some(hold) = hold else {
                    metrics::decided("authorize", answer.reason, received.elapsed());
                    send(&self.client, reply, answer).await;
                    return;
                };
                self.journal_place(hold, answer, reply, received).await;
            }
        }
    }

    /// Records the hold, then answers (from a task, so the next request need not wait).
    async fn journal_place(
        &mut self,
        hold: Hold,
        answer: Answer,
        reply: ReplyTo,
        received: std::time::Instant,
    ) {
        let record = Record::Place { hold: hold.clone() };
        let ack = match self.journal.record(&record).await {
            Ok(ack) => ack,
            Err(e) => {
                tracing::warn!(error = %e, "hold not recorded; denying as unavailable");
                self.book.release(&hold.customer, &hold.id);
                let a = Answer::deny(Reason::Unavailable, "the hold could not be recorded");
                metrics::decided("authorize", a.reason, received.elapsed());
                send(&self.client, reply, a).await;
                return;
            }
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let answer = match ack.await {
                Ok(_) => answer,
                Err(e) => {
                    // the hold stays in the book until it expires: never less reserved than
                    // an agent might use
                    tracing::warn!(error = %e, "hold record not acknowledged; denying as unavailable");
                    Answer::deny(Reason::Unavailable, "the hold could not be recorded")
                }
            };
            metrics::decided("authorize", answer.reason, received.elapsed());
            send(&client, reply, answer).await;
        });
    }

    async fn journal_release(&self, h: &Hold) {
        self.journal_later(Record::Release {
            customer: h.customer.clone(),
            hold_id: h.id.clone(),
        })
        .await;
    }

    /// Records without waiting for JetStream to store it: a release that is lost leaves the
    /// hold until it expires after a restart, a reduction that is lost restores the whole hold
    /// (never less reserved). The record is handed to the connection here, by the one task
    /// that journals every record of the partition (as [`Decider::journal_place`] does), so
    /// the journal holds them in the order they were made: a release can never land before
    /// the hold's reduction and be undone by it at a replay. Only the acknowledgement is
    /// awaited in the background.
    async fn journal_later(&self, record: Record) {
        match self.journal.record(&record).await {
            Ok(ack) => {
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::warn!(error = %e, "hold change not recorded");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "hold change not recorded"),
        }
    }

    /// Journals what a batch did to its holds: ended ones released, reduced ones placed again
    /// with what they still reserve (and the batch that reduced them).
    async fn journal_settled(&self, settled: Settled) {
        metrics::holds_settled(settled.ended.len());
        for h in &settled.ended {
            self.journal_release(h).await;
        }
        for hold in settled.reduced {
            self.journal_later(Record::Place { hold }).await;
        }
    }

    async fn batch(&mut self, notices: Vec<Notice>) -> Option<Stop> {
        let first = notices.first()?;
        let batch = first.batch.clone();
        if self.aborted.contains(&batch) || self.applied.contains(&batch) {
            return None;
        }
        let holds: Vec<(String, String)> = notices
            .iter()
            .flat_map(|n| n.holds.iter())
            .map(|h| (h.customer.clone(), h.hold.clone()))
            .collect();
        let rows: Vec<&tally_platform::usage::UsageRow> =
            notices.iter().flat_map(|n| n.rows.iter()).collect();
        if first.bseq <= self.committed_through {
            // storage had its rows; its holds are settled all the same (a hold journaled before
            // the rebuild whose usage is already counted would reserve twice until it expired)
            let settled = self.book.settle(&batch, &rows, &holds);
            self.journal_settled(settled).await;
            return None;
        }
        self.applied.insert(batch.clone());
        let touched = self.book.add_rows(&self.catalog, rows.iter().copied());
        let settled = self.book.settle(&batch, &rows, &holds);
        self.journal_settled(settled).await;
        for customer in touched {
            self.notify_crossings(&customer);
        }
        None
    }

    /// Sets the limit of every wallet budget to what the customer's wallet leaves for its
    /// current period ([`super::wallet`]). A wallet that cannot be read into an amount (no
    /// plan, a corrupt movement) leaves a limit of 0: a hard wallet budget then denies
    /// (fails closed), and the reason is logged.
    fn fill_wallet_limits(&mut self) {
        let now = (self.now_ms)();
        let empty = Wallet::default();
        let mut reserved = BTreeMap::new();
        for (customer, budgets) in &mut self.book.budgets {
            if !budgets.iter().any(|b| b.kind == Kind::Wallet) {
                continue;
            }
            let wallet = self.wallets.get(customer).unwrap_or(&empty);
            let (limit, taken) = match wallet_limit(&self.catalog, customer, wallet, now) {
                Ok(l) => {
                    self.wallet_unreadable.remove(customer);
                    l
                }
                Err(e) => {
                    metrics::wallet_unreadable();
                    // once per customer until it reads again: the refresh runs every few seconds
                    if self.wallet_unreadable.insert(customer.clone()) {
                        tracing::warn!(%customer, error = %e, "wallet budget limit unknown; 0 until it can be read");
                    }
                    (Decimal::ZERO, Decimal::ZERO)
                }
            };
            for b in budgets.iter_mut().filter(|b| b.kind == Kind::Wallet) {
                b.limit = limit;
            }
            reserved.insert(customer.clone(), taken);
        }
        self.book.wallet_reserved = reserved;
    }

    fn notify_crossings(&mut self, customer: &str) {
        // without alerts this session, leave the crossings unmarked: the next session sends them
        let Some(alerts) = self.alerts.clone() else {
            return;
        };
        let crossings = self.book.crossings(customer);
        for c in crossings {
            let (alerts, now) = (alerts.clone(), (self.now_ms)());
            tokio::spawn(async move {
                match alerts.notify(&c, now).await {
                    Ok(sent) => metrics::alert(sent),
                    Err(e) => {
                        tracing::warn!(customer = %c.customer, budget = %c.budget_id, threshold = c.threshold, error = %e, "threshold notification failed; retried after the next rebuild");
                    }
                }
            });
        }
    }

    fn balance(&mut self, customer: &str) -> Option<Balance> {
        let budgets = self.book.budgets.get(customer).cloned().unwrap_or_default();
        let reserved = self
            .book
            .wallet_reserved
            .get(customer)
            .copied()
            .unwrap_or_default();
        let book = self
            .book
            .current(&self.catalog, customer, (self.now_ms)())?;
        let mut b = balance_of(
            customer,
            book.period,
            &book.costs,
            book.holds.values(),
            (&budgets, reserved),
        );
        b.entitlements = self.book.entitlement_use(&self.catalog, customer);
        Some(b)
    }
}

/// A customer's balance from its book's parts (pure).
pub fn balance_of<'h>(
    customer: &str,
    period: Period,
    costs: &Costs,
    holds: impl Iterator<Item = &'h Hold> + Clone,
    (budgets, wallet_reserved): (&[Budget], Decimal),
) -> Balance {
    let meters = costs
        .meters
        .iter()
        .map(|(m, s)| {
            (
                m.clone(),
                MeterBalance {
                    quantity: s.quantity,
                    amount: s.amount,
                },
            )
        })
        .collect();
    let mut agents: BTreeMap<String, BTreeMap<String, MeterBalance>> = BTreeMap::new();
    for ((a, m), s) in &costs.agents {
        agents.entry(a.clone()).or_default().insert(
            m.clone(),
            MeterBalance {
                quantity: s.quantity,
                amount: s.amount,
            },
        );
    }
    let budgets = budgets
        .iter()
        .map(|b| {
            let spent = super::book::budget_spent(b, costs);
            let held: Decimal = holds
                .clone()
                .filter(|h| b.covers(&h.agent, &h.meter))
                .map(|h| h.held_for(b.kind))
                .sum();
            let limit = b.limit_with(spent, wallet_reserved);
            BudgetBalance {
                budget_id: b.budget_id.clone(),
                agent: b.agent.clone(),
                meter: b.meter.clone(),
                kind: b.kind,
                limit,
                spent,
                held,
                remaining: (limit - spent - held).max(Decimal::ZERO),
                hard: b.hard,
            }
        })
        .collect();
    Balance {
        customer: customer.to_owned(),
        period_start: period.start_rfc3339(),
        period_end: period.end_rfc3339(),
        currency: costs.currency.clone(),
        spend: costs.total,
        meters,
        agents,
        holds: holds.clone().count(),
        held_amount: holds.map(|h| h.amount).sum(),
        budgets,
        entitlements: super::book::EntitlementUse::default(),
    }
}

/// Sends an answer where it is expected.
pub async fn send(client: &async_nats::Client, reply: ReplyTo, answer: Answer) {
    match reply {
        ReplyTo::Channel(tx) => {
            let _ = tx.send(answer);
        }
        ReplyTo::Nats(subject) => {
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            if let Err(e) = client.publish(subject, body.into()).await {
                tracing::warn!(error = %e, "answer not sent");
            }
        }
    }
}

/// The ids of the latest [`Applied::CAP`] batches applied from the feed: a repeat of one
/// (a redelivered notice) is skipped. Bounded: the feed repeats a batch only soon after it.
#[derive(Debug, Default)]
pub struct Applied {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Applied {
    /// How many batch ids are remembered.
    pub const CAP: usize = 65_536;

    pub fn contains(&self, batch: &str) -> bool {
        self.ids.contains(batch)
    }

    /// Remembers `batch`, forgetting the oldest beyond [`Applied::CAP`].
    pub fn insert(&mut self, batch: String) {
        if self.ids.insert(batch.clone()) {
            self.order.push_back(batch);
        }
        while self.order.len() > Self::CAP {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Per batch id, the chunks received so far (a batch is applied once all arrived).
#[derive(Default)]
pub struct Chunks {
    partial: HashMap<String, Vec<Notice>>,
}

impl Chunks {
    /// Adds a chunk; the whole batch when it is complete.
    pub fn add(&mut self, n: Notice) -> Option<Vec<Notice>> {
        if n.chunks <= 1 {
            return Some(vec![n]);
        }
        let id = n.batch.clone();
        let total = n.chunks as usize;
        let parts = self.partial.entry(id.clone()).or_default();
        if parts.iter().all(|p| p.chunk != n.chunk) {
            parts.push(n);
        }
        if parts.len() < total {
            // a batch abandoned mid-way (its attempt failed) never completes: bound the set
            if self.partial.len() > 1024 {
                self.partial.clear();
            }
            return None;
        }
        self.partial.remove(&id)
    }
}

/// What `customer`'s wallet holds for its current period at `now_ms`, in its billing
/// currency: what its grants still hold (the wallet budget's stored limit) and what this
/// period's charges already took from them ([`super::wallet`]).
pub fn wallet_limit(
    catalog: &Catalog,
    customer: &str,
    wallet: &Wallet,
    now_ms: i64,
) -> Result<(Decimal, Decimal), String> {
    let id = tally_domain::CustomerId::new(customer).map_err(|e| e.to_string())?;
    let sub = catalog
        .subscription_at(&id, now_ms)
        .ok_or("no plan covers the customer now")?;
    let plan = catalog
        .plan_of(&sub, now_ms)
        .ok_or_else(|| format!("plan {} has no version now", sub.plan))?;
    let currency = sub.currency.unwrap_or(plan.currency);
    // the invoice of the usage period (a month under an annual fee), which the wallet's
    // reservations for the period's usage name
    let period = sub.usage_cycle.period_containing(now_ms);
    let invoice = wallet::period_invoice_id(customer, period.start_ms);
    let a = wallet::available_minor(wallet, currency.code(), &invoice, now_ms)
        .map_err(|e| e.to_string())?;
    let units = currency.minor_units();
    Ok((
        wallet::amount(a.remaining_minor, units),
        wallet::amount(a.reserved_minor, units),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under an annual fee with monthly usage the wallet's reservation of February's usage is
    /// on February's invoice: in February that is what the period already took (it read
    /// January's invoice, the annual period's start, all year).
    #[test]
    fn the_wallet_reads_the_usage_periods_invoice() {
        #[derive(serde::Deserialize)]
        struct F {
            plans: Vec<crate::config::PlanSpec>,
            subscriptions: Vec<crate::config::SubscriptionSpec>,
        }
        let f: F = toml::from_str(
            r#"
            [[plans]]
            id = "p"
            version = 1
            currency = "USD"
            effective_from = "2026-01-01T00:00:00Z"
            prices = [{ model = "per_unit", meter = "calls", unit_price = "0.10" }]
            [[subscriptions]]
            customer = "acme"
            plan = "p"
            interval = "annual"
            usage_interval = "monthly"
            "#,
        )
        .expect("catalog");
        let meters = tally_domain::meter::validate_meters(
            serde_json::from_str(r#"[{"slug":"calls","event_type":"c","aggregation":"COUNT"}]"#)
                .expect("meters"),
        )
        .expect("meters");
        let catalog = Catalog::new(
            f.plans,
            f.subscriptions,
            &crate::config::RaterConfig::default(),
            &meters,
        )
        .expect("catalog");
        let feb_1 = 1_769_904_000_000; // 2026-02-01T00:00:00Z
        let wallet = Wallet {
            grants: vec![wallet::GrantFact {
                grant_id: "g1".into(),
                currency: "USD".into(),
                expires_at_ms: None,
            }],
            movements: vec![
                wallet::MovementFact {
                    grant_id: "g1".into(),
                    kind: "grant".into(),
                    amount_minor: 10_000,
                    invoice_id: String::new(),
                },
                wallet::MovementFact {
                    grant_id: "g1".into(),
                    kind: "consume".into(),
                    amount_minor: 300,
                    invoice_id: wallet::period_invoice_id("acme", feb_1),
                },
            ],
        };
        let (limit, taken) =
            wallet_limit(&catalog, "acme", &wallet, feb_1 + 14 * 86_400_000).expect("a limit");
        assert_eq!(
            (limit, taken),
            (Decimal::new(9700, 2), Decimal::new(300, 2))
        );
    }

    /// The applied-batch set keeps the latest [`Applied::CAP`] ids: a repeat of a recent
    /// batch is recognised, the oldest are forgotten, and the set never grows past the cap.
    #[test]
    fn the_applied_batches_are_bounded() {
        let mut a = Applied::default();
        for i in 0..Applied::CAP + 10 {
            a.insert(format!("b{i}"));
        }
        a.insert(format!("b{}", Applied::CAP + 9)); // a repeat adds nothing
        assert_eq!(a.len(), Applied::CAP);
        assert!(!a.contains("b9"), "the oldest are forgotten");
        assert!(a.contains("b10"));
        assert!(a.contains(&format!("b{}", Applied::CAP + 9)));
    }
}
