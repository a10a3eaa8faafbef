//! The live book of one partition: per customer, the committed usage of the current billing
//! period (per agent, meter and group), its cost as the rater prices it, the holds of allowed
//! requests, and the decisions made from them.
//!
//! Pure: it is given usage rows, the catalog, the budgets and the time, and answers with
//! decisions and the facts to make durable (hold records, threshold crossings); it never
//! talks to NATS or ClickHouse. One book is owned by one task, so decisions are sequential
//! and a request sees every hold placed before it: concurrent requests can never overshoot a
//! budget together.
//!
//! Definitions (docs/SPEND.md):
//! - **spend** of a customer: the current period's usage charges before tax, as the rater
//!   would charge them now (the plan version in force, tiers, allowances, commitments,
//!   coupons, in the billing currency); of a meter: that meter's charges; of an agent: its
//!   share of each charge in proportion to its quantity of the charge's usage.
//! - **held**: what allowed requests may still use: per hold, its quantity and the marginal
//!   cost of that quantity when it was placed.
//! - a request is allowed when, for every hard budget that covers its agent and meter,
//!   spend + held + the request's marginal cost (or quantity) stays within the limit.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{Aggregation, CustomerId, MeterSlug, Period};
use tally_platform::usage::{Totals, UsageRow};

use crate::catalog::plan::Plan;
use crate::catalog::{Catalog, Subscription};
use crate::rating::charge::{compute_with, MeterUsage};

use super::budget::{Budget, Kind};
use super::protocol::{Answer, Reason};

/// An allowed request's reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    pub customer: String,
    pub agent: String,
    pub meter: String,
    /// The priced group (`{}` unless the meter's price is per group).
    pub group_key: String,
    /// The group-by values the request declared (what entitlement limits match).
    #[serde(default)]
    pub group: BTreeMap<String, String>,
    pub quantity: Decimal,
    /// The marginal cost of `quantity` when the hold was placed (billing currency).
    pub amount: Decimal,
    /// The tax on `amount` (what a wallet budget holds on top of it).
    #[serde(default)]
    pub tax: Decimal,
    /// The request's `max_quantity` once its usage settled part of it (`quantity` is then
    /// what is left): a retry of the request is recognised by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<Decimal>,
    pub expires_at_ms: i64,
    /// Per committed batch (id) whose usage already reduced the hold, the quantity it took:
    /// the batch read again (the feed re-read after a restart, a repeat) takes nothing more.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settled: BTreeMap<String, Decimal>,
}

impl Hold {
    /// The hold an allowed request places: its quantity under `group_key`, at its marginal
    /// cost and the tax on it.
    fn placed(ask: &Ask<'_>, group_key: String, (amount, tax): (Decimal, Decimal)) -> Hold {
        Hold {
            id: ask.hold_id.clone(),
            customer: ask.customer.to_string(),
            agent: ask.agent.to_owned(),
            meter: ask.meter.to_owned(),
            group_key,
            group: ask.group.clone(),
            quantity: ask.quantity,
            amount,
            tax,
            declared: None,
            expires_at_ms: ask.expires_at_ms,
            settled: BTreeMap::new(),
        }
    }

    /// What the hold reserves of a budget of `kind`: its quantity, its amount, or (a wallet)
    /// its amount after tax.
    pub fn held_for(&self, kind: Kind) -> Decimal {
        match kind {
            Kind::Quantity => self.quantity,
            Kind::Amount => self.amount,
            Kind::Wallet => self.amount.saturating_add(self.tax),
        }
    }
}

/// A budget threshold crossed by committed spend, to notify once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crossing {
    pub customer: String,
    pub budget_id: String,
    pub agent: Option<String>,
    pub meter: Option<String>,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    pub threshold: u8,
    pub spent: Decimal,
    pub limit: Decimal,
    pub kind: Kind,
    pub currency: Option<String>,
}

impl Crossing {
    /// The crossing's identity: one notification per (customer, budget, period, threshold).
    pub fn id(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.customer, self.budget_id, self.period_start_ms, self.threshold
        )
    }
}

/// Spend and quantity of a meter (or of one agent's use of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Spent {
    pub quantity: Decimal,
    pub amount: Decimal,
}

/// One customer's priced spend of the period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Costs {
    pub currency: Option<String>,
    pub total: Decimal,
    pub meters: BTreeMap<String, Spent>,
    /// Per (agent, meter).
    pub agents: BTreeMap<(String, String), Spent>,
    /// Set when pricing failed (overflow); the customer is then denied until it prices.
    pub error: Option<String>,
    /// The tax the charges of `total` carry (unrounded; 0 without a tax region): what a
    /// wallet pays on top of `total`.
    pub tax: Decimal,
}

impl Costs {
    /// The spend after tax (what the invoice, and so the wallet, pays).
    pub fn total_with_tax(&self) -> Decimal {
        self.total.saturating_add(self.tax)
    }
}

/// Per (agent, meter, group key): the aggregation and totals.
type Usage = BTreeMap<(String, String, String), (Aggregation, Vec<String>, Vec<String>, Totals)>;

/// Per priced key (meter, group key or `{}`): the aggregation, the group's names and values,
/// and the totals over agents.
type PricedTotals = BTreeMap<(String, String), (Aggregation, Vec<String>, Vec<String>, Totals)>;

/// The current period of one customer.
#[derive(Debug, Clone)]
pub struct CustomerBook {
    pub period: Period,
    /// Where the current subscription's part of the period starts.
    pub segment_from_ms: i64,
    /// The latest instant of the segment the book was asked about (a request, a row): the
    /// customer's lines are looked up up to it (a line may start within the segment).
    seen_ms: i64,
    usage: Usage,
    pub holds: BTreeMap<String, Hold>,
    pub costs: Costs,
    /// Crossings already notified (or found notified) this period: (budget, threshold).
    notified: BTreeSet<(String, u8)>,
}

/// The live book of a partition.
#[derive(Debug, Default)]
pub struct Book {
    pub customers: HashMap<String, CustomerBook>,
    /// Declared meters: slug to aggregation.
    pub meters: HashMap<String, Aggregation>,
    /// Budgets per customer.
    pub budgets: BTreeMap<String, Vec<Budget>>,
    /// Per customer with a wallet budget: what this period's charges already took from its
    /// wallet (the budgets' limits hold what the grants still have; [`Budget::limit_with`]).
    pub wallet_reserved: BTreeMap<String, Decimal>,
    /// The most holds one customer may have at once (`spend.max_holds_per_customer`); `None`:
    /// no cap.
    pub max_holds_per_customer: Option<usize>,
    /// Every hold by (expiry, customer, id): expiry pops the due ones instead of scanning.
    expiry: BTreeSet<(i64, String, String)>,
}

/// What a committed batch did to the holds its events name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Holds used up by their usage (or of a meter whose usage is a level, not a volume): gone.
    pub ended: Vec<Hold>,
    /// Holds whose work used part of them: they reserve `quantity − usage so far` (and the
    /// same share of their amount) until they expire.
    pub reduced: Vec<Hold>,
}

/// Whether usage `row` may be the work of hold `h`: the same customer, agent and meter, and
/// no group-by value of the row contradicts what the request declared.
fn row_of_hold(row: &UsageRow, h: &Hold) -> bool {
    row.customer == h.customer
        && row.agent == h.agent
        && row.meter == h.meter
        && row
            .group_names
            .iter()
            .zip(&row.group_values)
            .all(|(n, v)| h.group.get(n).is_none_or(|hv| hv == v))
}

/// What hold `h` still reserves after the batch's rows: `quantity` minus the usage of the
/// rows that may be its work, taking each row's usage once (`left`: what earlier holds of the
/// batch did not take). Usage of other work of the same agent and meter in the batch counts as
/// the hold's, so the rest is never more than the work may still use.
fn rest_of_hold(
    h: &Hold,
    quantity: Decimal,
    rows: &[&UsageRow],
    candidates: &[usize],
    left: &mut [Decimal],
) -> Decimal {
    let mut rest = quantity;
    for &i in candidates {
        if rest <= Decimal::ZERO {
            break;
        }
        let (Some(row), Some(l)) = (rows.get(i), left.get_mut(i)) else {
            continue;
        };
        if !row_of_hold(row, h) {
            continue;
        }
        let take = rest.min((*l).max(Decimal::ZERO));
        *l -= take;
        rest -= take;
    }
    rest.max(Decimal::ZERO)
}

/// The earliest instant of any customer's current period segment at `now_ms`: what a
/// rebuild reads usage from. `None` when no customer has a plan.
pub fn live_from_ms(catalog: &Catalog, now_ms: i64) -> Option<i64> {
    catalog
        .customers()
        .filter_map(|c| segment_at(catalog, c, now_ms).map(|(_, from)| from))
        .chain(catalog.default_period_start(now_ms))
        .min()
}

/// The denial of a customer without a plan in force: `unknown_customer`, the detail saying
/// when it is quarantined because its stored catalog records conflict (issue 17: the rating
/// pass leaves it out too), so an operator is not sent looking for a missing subscription.
fn no_plan(catalog: &Catalog, customer: &CustomerId) -> Answer {
    let detail = match catalog.quarantine_of(customer.as_ref()) {
        Some(why) => format!(
            "customer {customer} is left out: its stored catalog records conflict \
             (docs/OPERATIONS.md, \"Conflicting catalog records\"): {why}"
        ),
        None => format!("customer {customer} has no plan"),
    };
    Answer::deny(Reason::UnknownCustomer, detail)
}

/// What a row of usage or a request is billed under at an instant: the period and segment.
fn segment_at(catalog: &Catalog, customer: &CustomerId, at_ms: i64) -> Option<(Period, i64)> {
    let (_, cycle, from_ms, _) = catalog.coverage_at(customer, at_ms)?;
    let period = cycle.period_containing(at_ms);
    Some((period, period.start_ms.max(from_ms)))
}

/// The quantity after adding `add` to `current` under `agg`: additive meters add, MAX and
/// LATEST may rise to `add`, MIN never rises.
fn projected(agg: Aggregation, current: Decimal, add: Decimal) -> Option<Decimal> {
    match agg {
        Aggregation::Sum | Aggregation::Count | Aggregation::UniqueCount => {
            current.checked_add(add)
        }
        Aggregation::Max | Aggregation::Latest => Some(current.max(add)),
        Aggregation::Min => Some(current),
    }
}

impl CustomerBook {
    fn new(period: Period, segment_from_ms: i64) -> CustomerBook {
        CustomerBook {
            period,
            segment_from_ms,
            seen_ms: segment_from_ms,
            usage: Usage::new(),
            holds: BTreeMap::new(),
            costs: Costs::default(),
            notified: BTreeSet::new(),
        }
    }

    /// Per priced key (meter, group key or `{}`): aggregation, group, totals over agents.
    fn priced_totals(&self, per_group: impl Fn(&str) -> bool) -> PricedTotals {
        let mut out = PricedTotals::new();
        for ((_, meter, gk), (agg, names, values, t)) in &self.usage {
            let (key, names, values) = if per_group(meter) {
                ((meter.clone(), gk.clone()), names.clone(), values.clone())
            } else {
                ((meter.clone(), "{}".to_owned()), vec![], vec![])
            };
            let e = out
                .entry(key)
                .or_insert_with(|| (*agg, names, values, Totals::default()));
            // merging what was added before cannot overflow where adding it did not
            let _ = e.3.merge(t);
        }
        out
    }
}

/// The unrounded tax on `amount` at `rate_percent` (as [`crate::catalog::tax::tax_on`]); a
/// rate is at most 100 %, so on overflow the tax is taken as the whole amount (never less).
fn tax_of(amount: Decimal, rate_percent: Decimal) -> Decimal {
    amount
        .checked_mul(rate_percent)
        .and_then(|x| x.checked_div(Decimal::ONE_HUNDRED))
        .unwrap_or(amount)
}

/// A priced quantity: the charge amount before tax, its currency, and the tax rate (percent)
/// its charge carries (0 without tax).
type Priced = (Decimal, String, Decimal);

/// The subscription line that prices `meter` for the book's segment and its plan version, as
/// the rater selects them ([`Catalog::subscription_for`], [`Catalog::plan_of`]): of the
/// customer's records in force during the segment (up to the latest instant the book saw),
/// the latest whose plan version (its pinned one, else the one effective at its part's start)
/// prices the meter; else the subscription covering the segment (the first line, the default
/// plan). Lines of a customer never price the same meter, so at most one line matches.
fn line_for<'c>(
    catalog: &'c Catalog,
    customer: &CustomerId,
    book: &CustomerBook,
    meter: &MeterSlug,
) -> Option<(Cow<'c, Subscription>, &'c Plan)> {
    let at = book.seen_ms.max(book.segment_from_ms);
    let priced = catalog
        .subscriptions_of(customer)
        .iter()
        .rev()
        .filter(|s| s.from_ms <= at && s.to_ms > book.segment_from_ms && s.from_ms < s.to_ms)
        .find_map(|s| {
            catalog
                .plan_of(s, s.from_ms.max(book.segment_from_ms))
                .filter(|p| p.prices.contains_key(meter))
                .map(|p| (Cow::Borrowed(s), p))
        });
    if priced.is_some() {
        return priced;
    }
    let sub = catalog.subscription_for(customer, meter, at)?;
    let plan = catalog.plan_of(&sub, sub.from_ms.max(book.segment_from_ms))?;
    Some((sub, plan))
}

/// The plan versions of every line of the customer in force at the latest instant the book
/// saw (each its pinned version, else the one effective at its part's start): what the
/// customer is entitled to is what any of them gives. Without a record in force, the plan of
/// the subscription covering the segment (the default plan).
fn plans_of<'c>(catalog: &'c Catalog, customer: &CustomerId, book: &CustomerBook) -> Vec<&'c Plan> {
    let at = book.seen_ms.max(book.segment_from_ms);
    let mut plans: Vec<&Plan> = catalog
        .subscriptions_of(customer)
        .iter()
        .filter(|s| s.covers(at))
        .filter_map(|s| catalog.plan_of(s, s.from_ms.max(book.segment_from_ms)))
        .collect();
    plans.sort_by(|a, b| (&a.id, a.version).cmp(&(&b.id, b.version)));
    if !plans.is_empty() {
        return plans;
    }
    catalog
        .subscription_at(customer, book.segment_from_ms)
        .and_then(|sub| catalog.plan_of(&sub, sub.from_ms.max(book.segment_from_ms)))
        .into_iter()
        .collect()
}

/// Prices `quantity` of (customer, meter, group) in the segment (`None`: the plan has no
/// price for it).
#[allow(clippy::too_many_arguments)]
fn price(
    catalog: &Catalog,
    customer: &CustomerId,
    book: &CustomerBook,
    meter: &str,
    aggregation: Aggregation,
    group: (&str, &[String], &[String]),
    quantity: Decimal,
) -> Result<Option<Priced>, String> {
    let Ok(slug) = MeterSlug::new(meter.to_owned()) else {
        return Ok(None);
    };
    let Some((sub, plan)) = line_for(catalog, customer, book, &slug) else {
        return Ok(None);
    };
    let from_ms = book.segment_from_ms.max(sub.from_ms);
    let usage = MeterUsage {
        customer: customer.clone(),
        period: book.period,
        meter: slug.clone(),
        aggregation,
        group_key: group.0.to_owned(),
        group_names: group.1.to_vec(),
        group_values: group.2.to_vec(),
        segment_from_ms: from_ms,
        segment_to_ms: book.period.end_ms.min(sub.to_ms),
        quantity,
        windows: 1,
        first_window_ms: from_ms,
        last_window_end_ms: from_ms,
    };
    let terms = catalog.terms(&sub, plan, &book.period, &slug);
    match compute_with(&usage, plan, &terms) {
        // unrounded (the charge rounds once, to minor units): a request smaller than a
        // minor unit still costs what it costs, so many small ones cannot slip through
        Ok(Some(c)) => {
            let lines: Decimal = c.tiers.iter().map(|t| t.amount).sum();
            let amount = lines
                .checked_mul(c.fx_rate.unwrap_or(Decimal::ONE))
                .ok_or("amount overflows")?;
            let rate = c.tax_rate.unwrap_or_default();
            Ok(Some((amount, c.currency.to_owned(), rate)))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn per_group(catalog: &Catalog, customer: &CustomerId, book: &CustomerBook, meter: &str) -> bool {
    let Ok(slug) = MeterSlug::new(meter.to_owned()) else {
        return false;
    };
    line_for(catalog, customer, book, &slug)
        .and_then(|(_, p)| p.prices.get(&slug))
        .is_some_and(|p| p.model.per_group())
}

/// The plans' names, for answers and balances (`p v1, seats v3`).
fn plan_names(plans: &[&Plan]) -> String {
    plans
        .iter()
        .map(|p| format!("{} v{}", p.id, p.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Committed quantity and held quantity of the period that count against limit `l` (every
/// agent's).
fn limit_use(
    l: &crate::catalog::entitlements::LimitSpec,
    book: &CustomerBook,
) -> (Decimal, Decimal) {
    let used = book
        .usage
        .iter()
        .filter(|((_, meter, _), (_, names, values, _))| {
            *meter == l.meter && crate::catalog::entitlements::matches_lists(l, names, values)
        })
        .filter_map(|(_, (agg, _, _, t))| t.quantity(agg.as_str()))
        .fold(Decimal::ZERO, |a, q| a.saturating_add(q));
    let held = book
        .holds
        .values()
        .filter(|h| h.meter == l.meter && crate::catalog::entitlements::matches(l, &h.group))
        .fold(Decimal::ZERO, |a, h| a.saturating_add(h.quantity));
    (used, held)
}

/// One metered limit of a customer's plan and how much of it the period used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitUse {
    pub meter: String,
    pub group: BTreeMap<String, String>,
    pub limit: Decimal,
    pub used: Decimal,
    pub held: Decimal,
    pub remaining: Decimal,
}

/// What a customer's plan entitles it to, and its limits' use this period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EntitlementUse {
    pub plan: Option<String>,
    pub features: Vec<String>,
    pub limits: Vec<LimitUse>,
}

/// The customer's costs from its usage.
fn costs(catalog: &Catalog, customer: &CustomerId, book: &CustomerBook) -> Costs {
    let mut out = Costs::default();
    let priced = book.priced_totals(|m| per_group(catalog, customer, book, m));
    for ((meter, gk), (agg, names, values, totals)) in &priced {
        let quantity = totals.quantity(agg.as_str()).unwrap_or_default();
        let amount = match price(
            catalog,
            customer,
            book,
            meter,
            *agg,
            (gk, names, values),
            quantity,
        ) {
            Ok(Some((amount, currency, rate))) => {
                out.currency = Some(currency);
                out.tax = out.tax.saturating_add(tax_of(amount, rate));
                amount
            }
            Ok(None) => Decimal::ZERO,
            Err(e) => {
                out.error = Some(e);
                Decimal::ZERO
            }
        };
        let m = out.meters.entry(meter.clone()).or_default();
        m.quantity = m.quantity.saturating_add(quantity);
        m.amount = m.amount.saturating_add(amount);
        out.total = out.total.saturating_add(amount);
        // each agent's share of this charge, in proportion to its quantity
        let is_priced_key = |agent_gk: &str| gk == "{}" || gk == agent_gk;
        let weights: Vec<(&String, Decimal)> = book
            .usage
            .iter()
            .filter(|((_, m, g), _)| m == meter && is_priced_key(g))
            .map(|((a, _, _), (agg, _, _, t))| (a, t.quantity(agg.as_str()).unwrap_or_default()))
            .collect();
        let weight_total: Decimal = weights.iter().map(|(_, w)| *w).sum();
        for (agent, w) in weights {
            let s = out
                .agents
                .entry((agent.clone(), meter.clone()))
                .or_default();
            s.quantity = s.quantity.saturating_add(w);
            if !weight_total.is_zero() {
                let share = amount
                    .checked_mul(w)
                    .and_then(|x| x.checked_div(weight_total))
                    .unwrap_or_default();
                s.amount = s.amount.saturating_add(share);
            }
        }
    }
    out
}

/// A budget's committed spend: the billing currency before tax (an amount budget), after tax
/// (a wallet, which pays the invoice), or a quantity.
pub fn budget_spent(b: &Budget, costs: &Costs) -> Decimal {
    match (b.kind, &b.agent, &b.meter) {
        (Kind::Wallet, None, None) => costs.total_with_tax(),
        (Kind::Amount, None, None) => costs.total,
        (Kind::Amount | Kind::Wallet, None, Some(m)) => {
            costs.meters.get(m).map_or(Decimal::ZERO, |s| s.amount)
        }
        (Kind::Quantity, None, Some(m)) => {
            costs.meters.get(m).map_or(Decimal::ZERO, |s| s.quantity)
        }
        (kind, Some(a), meter) => costs
            .agents
            .iter()
            .filter(|((ag, m), _)| ag == a && meter.as_ref().is_none_or(|bm| bm == m))
            .map(|(_, s)| match kind {
                Kind::Amount | Kind::Wallet => s.amount,
                Kind::Quantity => s.quantity,
            })
            .sum(),
        (Kind::Quantity, None, None) => Decimal::ZERO,
    }
}

/// A budget's committed spend and what its holds reserve.
fn budget_use(b: &Budget, c: &CustomerBook) -> (Decimal, Decimal) {
    let held = c
        .holds
        .values()
        .filter(|h| b.covers(&h.agent, &h.meter))
        .map(|h| h.held_for(b.kind))
        .sum();
    (budget_spent(b, &c.costs), held)
}

/// An authorize request, validated.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub customer: &'a CustomerId,
    pub agent: &'a str,
    pub meter: &'a str,
    pub quantity: Decimal,
    pub group: &'a BTreeMap<String, String>,
    pub hold_id: String,
    pub expires_at_ms: i64,
}

impl Book {
    /// The customer's book for the segment covering `at_ms` (rolled over when a new period
    /// or subscription began); `None` when the customer has no plan then.
    fn book_at(
        &mut self,
        catalog: &Catalog,
        customer: &CustomerId,
        at_ms: i64,
    ) -> Option<&mut CustomerBook> {
        let (period, from_ms) = segment_at(catalog, customer, at_ms)?;
        let book = self
            .customers
            .entry(customer.to_string())
            .or_insert_with(|| CustomerBook::new(period, from_ms));
        if (book.period, book.segment_from_ms) < (period, from_ms) {
            let holds = std::mem::take(&mut book.holds);
            *book = CustomerBook::new(period, from_ms);
            // the holds' usage is still to come, in the new period
            book.holds = holds;
        }
        if (book.period, book.segment_from_ms) == (period, from_ms) {
            book.seen_ms = book.seen_ms.max(at_ms);
        }
        Some(book)
    }

    /// Adds committed usage rows (a rebuild's read or a feed notice); rows of an earlier
    /// period than the customer's current one are not live spend and are skipped. Returns
    /// the customers whose usage changed (repriced).
    pub fn add_rows<'r>(
        &mut self,
        catalog: &Catalog,
        rows: impl IntoIterator<Item = &'r UsageRow>,
    ) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        for row in rows {
            if self.add_row_unpriced(catalog, row) {
                touched.insert(row.customer.clone());
            }
        }
        for c in &touched {
            self.reprice(catalog, c);
        }
        touched
    }

    /// Adds one row without repricing (a rebuild adds millions, then reprices each customer
    /// once); `true` when it counted.
    pub fn add_row_unpriced(&mut self, catalog: &Catalog, row: &UsageRow) -> bool {
        let (Ok(customer), Ok(agg)) = (
            CustomerId::new(row.customer.clone()),
            row.aggregation.parse::<Aggregation>(),
        ) else {
            return false;
        };
        let at_ms = i64::from(row.start) * 1000;
        let Some((period, from_ms)) = segment_at(catalog, &customer, at_ms) else {
            return false;
        };
        let Some(book) = self.book_at(catalog, &customer, at_ms) else {
            return false;
        };
        if (book.period, book.segment_from_ms) != (period, from_ms) || at_ms < from_ms {
            return false;
        }
        let e = book
            .usage
            .entry((row.agent.clone(), row.meter.clone(), row.group_key.clone()))
            .or_insert_with(|| {
                (
                    agg,
                    row.group_names.clone(),
                    row.group_values.clone(),
                    Totals::default(),
                )
            });
        if e.3.add(row).is_none() {
            tracing::error!(customer = %row.customer, meter = %row.meter, "live usage too large to add; left out");
            return false;
        }
        true
    }

    /// Reprices every customer (after a rebuild or a catalog change).
    pub fn reprice_all(&mut self, catalog: &Catalog) {
        let customers: Vec<String> = self.customers.keys().cloned().collect();
        for c in customers {
            self.reprice(catalog, &c);
        }
    }

    /// The customer's book at `now_ms` (created empty, or rolled over to a new period), for
    /// a balance; `None` when the customer has no plan.
    pub fn current(
        &mut self,
        catalog: &Catalog,
        customer: &str,
        now_ms: i64,
    ) -> Option<&CustomerBook> {
        let id = CustomerId::new(customer.to_owned()).ok()?;
        let fresh = !self.customers.contains_key(customer);
        self.book_at(catalog, &id, now_ms)?;
        if fresh {
            self.reprice(catalog, customer);
        }
        self.customers.get(customer)
    }

    /// Recomputes one customer's costs.
    pub fn reprice(&mut self, catalog: &Catalog, customer: &str) {
        let Ok(id) = CustomerId::new(customer.to_owned()) else {
            return;
        };
        if let Some(book) = self.customers.get_mut(customer) {
            book.costs = costs(catalog, &id, book);
        }
    }

    /// Places (or replaces) a hold of a customer whose book exists.
    fn put_hold(&mut self, hold: Hold) {
        let Some(book) = self.customers.get_mut(&hold.customer) else {
            return;
        };
        let key = (hold.expires_at_ms, hold.customer.clone(), hold.id.clone());
        if let Some(old) = book.holds.insert(hold.id.clone(), hold) {
            self.expiry
                .remove(&(old.expires_at_ms, old.customer, old.id));
        }
        self.expiry.insert(key);
    }

    /// Removes a hold; `None` when it is not held.
    fn take_hold(&mut self, customer: &str, id: &str) -> Option<Hold> {
        let h = self.customers.get_mut(customer)?.holds.remove(id)?;
        self.expiry
            .remove(&(h.expires_at_ms, h.customer.clone(), h.id.clone()));
        Some(h)
    }

    /// How many holds the partition has.
    pub fn holds_active(&self) -> usize {
        self.expiry.len()
    }

    /// Settles the holds a committed batch's events name against the batch's usage `rows`:
    /// a hold of an additive meter (SUM, COUNT, UNIQUE_COUNT) keeps reserving what its work
    /// may still use, `quantity − usage so far`, until it expires, and ends once used up; a
    /// hold of a MAX, MIN or LATEST meter (a level, which its usage has now set) ends.
    ///
    /// A hold `batch` already reduced (its [`Hold::settled`], restored from the journal after
    /// a restart that reads the batch again) is not reduced again; what the batch took from
    /// it still counts as taken, so the batch's other holds get the same share as the first
    /// time.
    pub fn settle(
        &mut self,
        batch: &str,
        rows: &[&UsageRow],
        holds: &[(String, String)],
    ) -> Settled {
        let mut left: Vec<Decimal> = rows
            .iter()
            .map(|r| r.quantity().unwrap_or(Decimal::MAX))
            .collect();
        let mut index: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            index
                .entry((&r.customer, &r.agent, &r.meter))
                .or_default()
                .push(i);
        }
        let mut out = Settled::default();
        for (customer, id) in holds {
            let Some(h) = self
                .customers
                .get(customer)
                .and_then(|b| b.holds.get(id))
                .cloned()
            else {
                continue;
            };
            let additive = matches!(
                self.meters.get(&h.meter),
                Some(Aggregation::Sum | Aggregation::Count | Aggregation::UniqueCount)
            );
            let candidates = index
                .get(&(h.customer.as_str(), h.agent.as_str(), h.meter.as_str()))
                .map_or(&[][..], Vec::as_slice);
            if let Some(&taken) = h.settled.get(batch) {
                rest_of_hold(&h, taken, rows, candidates, &mut left);
                continue;
            }
            let rest = if additive {
                rest_of_hold(&h, h.quantity, rows, candidates, &mut left)
            } else {
                Decimal::ZERO
            };
            if rest.is_zero() {
                out.ended.extend(self.take_hold(customer, id));
            } else if rest < h.quantity {
                // the same share of the amount; on overflow the whole amount stays held
                let share = |x: Decimal| {
                    x.checked_mul(rest)
                        .and_then(|y| y.checked_div(h.quantity))
                        .unwrap_or(x)
                };
                let mut settled = h.settled.clone();
                settled.insert(batch.to_owned(), h.quantity - rest);
                let reduced = Hold {
                    quantity: rest,
                    amount: share(h.amount),
                    tax: share(h.tax),
                    declared: Some(h.declared.unwrap_or(h.quantity)),
                    settled,
                    ..h
                };
                self.put_hold(reduced.clone());
                out.reduced.push(reduced);
            }
        }
        out
    }

    /// Removes the holds expired at `now_ms` (the due ones only); returns them.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Hold> {
        let mut out = Vec::new();
        while self.expiry.first().is_some_and(|(at, _, _)| *at <= now_ms) {
            let Some((_, customer, id)) = self.expiry.pop_first() else {
                break;
            };
            out.extend(
                self.customers
                    .get_mut(&customer)
                    .and_then(|b| b.holds.remove(&id)),
            );
        }
        out
    }

    /// Restores a hold (from the journal after a restart), unless expired.
    pub fn restore(&mut self, catalog: &Catalog, hold: Hold, now_ms: i64) {
        if hold.expires_at_ms <= now_ms {
            return;
        }
        let Ok(customer) = CustomerId::new(hold.customer.clone()) else {
            return;
        };
        if self.book_at(catalog, &customer, now_ms).is_some() {
            self.put_hold(hold);
        }
    }

    /// Gives a hold back at the agent's request; `None` when it is not held.
    pub fn release(&mut self, customer: &str, hold: &str) -> Option<Hold> {
        self.take_hold(customer, hold)
    }

    /// Gives `agent`'s hold back (another agent's hold of the customer is not its to give).
    pub fn release_by(&mut self, customer: &str, agent: &str, hold: &str) -> Option<Hold> {
        if self.customers.get(customer)?.holds.get(hold)?.agent != agent {
            return None;
        }
        self.take_hold(customer, hold)
    }

    /// Decides an authorize request at `now_ms`: allowed, with the hold placed (to be made
    /// durable before the answer is sent), or denied with a reason.
    pub fn authorize(
        &mut self,
        catalog: &Catalog,
        ask: &Ask<'_>,
        now_ms: i64,
    ) -> (Answer, Option<Hold>) {
        let Some(&agg) = self.meters.get(ask.meter) else {
            return (
                Answer::deny(Reason::UnknownMeter, format!("meter {}", ask.meter)),
                None,
            );
        };
        let budgets: Vec<Budget> = self
            .budgets
            .get(ask.customer.as_str())
            .cloned()
            .unwrap_or_default();
        let reserved = self
            .wallet_reserved
            .get(ask.customer.as_str())
            .copied()
            .unwrap_or_default();
        let cap = self.max_holds_per_customer;
        let Some(book) = self.book_at(catalog, ask.customer, now_ms) else {
            return (no_plan(catalog, ask.customer), None);
        };
        if let Some(h) = book.holds.get(&ask.hold_id) {
            return (repeated(h, ask, &book.costs), None);
        }
        if let Some(cap) = cap {
            if book.holds.len() >= cap {
                return (
                    Answer::deny(
                        Reason::TooManyHolds,
                        format!("{cap} holds at once (spend.max_holds_per_customer)"),
                    ),
                    None,
                );
            }
        }
        let (group_key, cost, cost_tax) = match priced_request(catalog, ask, book, agg) {
            Ok(p) => p,
            Err(a) => return (a, None),
        };
        let remaining = match within_budgets(&budgets, reserved, book, ask, (cost, cost_tax)) {
            Ok(r) => r,
            Err(a) => return (a, None),
        };
        if let Err(a) = within_limits(catalog, ask, book) {
            return (a, None);
        }
        let hold = Hold::placed(ask, group_key, (cost, cost_tax));
        let currency = book.costs.currency.clone();
        self.put_hold(hold.clone());
        let answer = Answer {
            allow: true,
            hold_id: Some(hold.id.clone()),
            remaining: remaining.map(|r| r.max(Decimal::ZERO)),
            currency,
            reason: None,
            detail: None,
        };
        (answer, Some(hold))
    }

    /// Whether `customer`'s plan in force at `now_ms` has `feature`.
    pub fn feature(
        &mut self,
        catalog: &Catalog,
        customer: &CustomerId,
        feature: &str,
        now_ms: i64,
    ) -> Answer {
        let Some(book) = self.book_at(catalog, customer, now_ms) else {
            return no_plan(catalog, customer);
        };
        let plans = plans_of(catalog, customer, book);
        if plans.is_empty() {
            return Answer::deny(
                Reason::UnknownCustomer,
                format!("customer {customer} has no plan"),
            );
        }
        if plans.iter().any(|p| p.entitlements.has(feature)) {
            return Answer {
                allow: true,
                hold_id: None,
                remaining: None,
                currency: None,
                reason: None,
                detail: None,
            };
        }
        Answer::deny(
            Reason::NotEntitled,
            format!("plan {} has no feature {feature}", plan_names(&plans)),
        )
    }

    /// The entitlements of `customer`'s current plan and their use (for a balance).
    pub fn entitlement_use(&self, catalog: &Catalog, customer: &str) -> EntitlementUse {
        let (Ok(id), Some(book)) = (
            CustomerId::new(customer.to_owned()),
            self.customers.get(customer),
        ) else {
            return EntitlementUse::default();
        };
        let plans = plans_of(catalog, &id, book);
        if plans.is_empty() {
            return EntitlementUse::default();
        }
        let mut features: Vec<String> = Vec::new();
        for f in plans.iter().flat_map(|p| &p.entitlements.features) {
            if !features.contains(f) {
                features.push(f.clone());
            }
        }
        EntitlementUse {
            plan: Some(plan_names(&plans)),
            features,
            limits: plans
                .iter()
                .flat_map(|p| &p.entitlements.limits)
                .map(|l| {
                    let (used, held) = limit_use(l, book);
                    LimitUse {
                        meter: l.meter.clone(),
                        group: l.group.clone(),
                        limit: l.limit,
                        used,
                        held,
                        remaining: (l.limit - used - held).max(Decimal::ZERO),
                    }
                })
                .collect(),
        }
    }

    /// The thresholds newly crossed by `customer`'s committed spend (marked as notified).
    pub fn crossings(&mut self, customer: &str) -> Vec<Crossing> {
        let budgets = self.budgets.get(customer).cloned().unwrap_or_default();
        let reserved = self
            .wallet_reserved
            .get(customer)
            .copied()
            .unwrap_or_default();
        let Some(book) = self.customers.get_mut(customer) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for b in &budgets {
            let (spent, _) = budget_use(b, book);
            let limit = b.limit_with(spent, reserved);
            if limit.is_zero() {
                continue;
            }
            for &t in &b.thresholds {
                let bound = limit * Decimal::from(t) / Decimal::from(100);
                if spent < bound || !book.notified.insert((b.budget_id.clone(), t)) {
                    continue;
                }
                out.push(Crossing {
                    customer: customer.to_owned(),
                    budget_id: b.budget_id.clone(),
                    agent: b.agent.clone(),
                    meter: b.meter.clone(),
                    period_start_ms: book.period.start_ms,
                    period_end_ms: book.period.end_ms,
                    threshold: t,
                    spent,
                    limit,
                    kind: b.kind,
                    currency: book.costs.currency.clone(),
                });
            }
        }
        out
    }

    /// Forgets that a crossing was notified (sending it failed: it is tried again at the
    /// customer's next change).
    pub fn unmark_notified(&mut self, c: &Crossing) {
        if let Some(b) = self.customers.get_mut(&c.customer) {
            if b.period.start_ms == c.period_start_ms {
                b.notified.remove(&(c.budget_id.clone(), c.threshold));
            }
        }
    }

    /// Every hold, for a journal snapshot.
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.customers.values().flat_map(|b| b.holds.values())
    }
}

/// The answer to a request whose id names a placed hold: the same hold when it is the same
/// request again (its answer was lost), else a denial.
fn repeated(h: &Hold, ask: &Ask<'_>, costs: &Costs) -> Answer {
    let same = h.agent == ask.agent
        && h.meter == ask.meter
        && h.declared.unwrap_or(h.quantity) == ask.quantity
        && h.group == *ask.group;
    if !same {
        return Answer::deny(
            Reason::InvalidRequest,
            "request_id names a hold placed for another request",
        );
    }
    Answer {
        allow: true,
        hold_id: Some(h.id.clone()),
        remaining: None,
        currency: costs.currency.clone(),
        reason: None,
        detail: None,
    }
}

/// The request priced in `book` (its spend priced first when it is not yet, or failed
/// before): the group key it is priced under and its marginal cost and tax, or the denial
/// when pricing fails.
fn priced_request(
    catalog: &Catalog,
    ask: &Ask<'_>,
    book: &mut CustomerBook,
    agg: Aggregation,
) -> Result<(String, Decimal, Decimal), Answer> {
    if book.costs.error.is_some() || book.costs.currency.is_none() {
        book.costs = costs(catalog, ask.customer, book);
    }
    if let Some(e) = &book.costs.error {
        return Err(Answer::deny(Reason::Unavailable, format!("pricing: {e}")));
    }
    let (names, values): (Vec<String>, Vec<String>) = ask
        .group
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unzip();
    let group_key = if per_group(catalog, ask.customer, book, ask.meter) {
        serde_json::to_string(ask.group).unwrap_or_else(|_| "{}".into())
    } else {
        "{}".to_owned()
    };
    match marginal(catalog, ask, book, agg, (&group_key, &names, &values)) {
        Ok((cost, cost_tax)) => Ok((group_key, cost, cost_tax)),
        Err(e) => Err(Answer::deny(Reason::Unavailable, format!("pricing: {e}"))),
    }
}

/// What is left under the hard budgets covering the request once it is held (the least), or
/// the denial of the first it would exceed. `cost`: its marginal cost and the tax on it.
fn within_budgets(
    budgets: &[Budget],
    reserved: Decimal,
    book: &CustomerBook,
    ask: &Ask<'_>,
    (cost, cost_tax): (Decimal, Decimal),
) -> Result<Option<Decimal>, Answer> {
    let mut remaining: Option<Decimal> = None;
    for b in budgets.iter().filter(|b| b.covers(ask.agent, ask.meter)) {
        let (spent, held) = budget_use(b, book);
        let limit = b.limit_with(spent, reserved);
        let request = match b.kind {
            Kind::Amount => cost,
            Kind::Wallet => cost.saturating_add(cost_tax),
            Kind::Quantity => ask.quantity,
        };
        let left = limit - spent - held - request;
        if b.hard && left.is_sign_negative() && !left.is_zero() {
            let mut a = Answer::deny(Reason::BudgetExceeded, format!("budget {}", b.budget_id));
            a.remaining = Some((limit - spent - held).max(Decimal::ZERO));
            a.currency = book.costs.currency.clone();
            return Err(a);
        }
        remaining = Some(remaining.map_or(left, |r| r.min(left)));
    }
    Ok(remaining)
}

/// The denial of the first metered limit of the plan the request would exceed, if any.
fn within_limits(catalog: &Catalog, ask: &Ask<'_>, book: &CustomerBook) -> Result<(), Answer> {
    for plan in plans_of(catalog, ask.customer, book) {
        within_plan_limits(plan, ask, book)?;
    }
    Ok(())
}

/// The denial of the first metered limit of `plan` the request would exceed, if any.
fn within_plan_limits(plan: &Plan, ask: &Ask<'_>, book: &CustomerBook) -> Result<(), Answer> {
    for l in plan.entitlements.limits_for(ask.meter, ask.group) {
        let (used, held) = limit_use(l, book);
        let left = l.limit - used - held - ask.quantity;
        if left.is_sign_negative() && !left.is_zero() {
            let mut a = Answer::deny(
                Reason::EntitlementExceeded,
                format!(
                    "plan {} allows {} of {} {:?} per period",
                    plan.id, l.limit, l.meter, l.group
                ),
            );
            a.remaining = Some((l.limit - used - held).max(Decimal::ZERO));
            return Err(a);
        }
    }
    Ok(())
}

/// The marginal cost of the request: the price of (committed + held + requested) minus the
/// price of (committed + held), for its priced key.
fn marginal(
    catalog: &Catalog,
    ask: &Ask<'_>,
    book: &CustomerBook,
    agg: Aggregation,
    group: (&str, &[String], &[String]),
) -> Result<(Decimal, Decimal), String> {
    let priced = book.priced_totals(|m| per_group(catalog, ask.customer, book, m));
    let committed = priced
        .get(&(ask.meter.to_owned(), group.0.to_owned()))
        .map_or(Decimal::ZERO, |(agg, _, _, t)| {
            t.quantity(agg.as_str()).unwrap_or_default()
        });
    let mut base = committed;
    for h in book
        .holds
        .values()
        .filter(|h| h.meter == ask.meter && h.group_key == group.0)
    {
        base = projected(agg, base, h.quantity).ok_or("held quantity overflows")?;
    }
    let with = projected(agg, base, ask.quantity).ok_or("requested quantity overflows")?;
    let price_of = |q: Decimal| {
        price(catalog, ask.customer, book, ask.meter, agg, group, q)
            .map(|p| p.map_or((Decimal::ZERO, Decimal::ZERO), |(a, _, r)| (a, r)))
    };
    let ((with_amount, rate), (base_amount, _)) = (price_of(with)?, price_of(base)?);
    let delta = (with_amount - base_amount).max(Decimal::ZERO);
    Ok((delta, tax_of(delta, rate)))
}

#[cfg(test)]
mod tests;
