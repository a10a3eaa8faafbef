//! The catalog: validated plan versions and subscriptions, and the rules for which plan
//! version prices a customer's period. A period is priced entirely by the version of its
//! subscription's plan that is effective at the period's start (the latest `effective_from`
//! at or before it); a new version takes effect from the next period on.
//!
//! It owns the catalog's rules, pure over typed values: plan versions ([`plan`],
//! [`entitlements`]), customers, agents and meters ([`customers`], [`meters`], [`registry`]),
//! dated tax and FX rates ([`tax`], [`fx`], [`rates`]), billing periods in a time zone
//! ([`zone`]), what applies to a charge ([`terms`]) and why an entry is refused
//! ([`CatalogError`]). It never reads or writes storage and never imports [`crate::store`],
//! which loads the facts these rules decide on and appends what they accept.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_domain::{BillingCycle, Currency, CustomerId, Meter, MeterSlug, Period};
use tally_platform::ConfigError;

use crate::config::{PlanSpec, RaterConfig, SubscriptionSpec, SubscriptionState};
use lifecycle::validate_subscription;
pub use lifecycle::{Trial, TRIAL_COUPON};

pub mod conflicts;
pub mod customers;
pub mod entitlements;
pub mod error;
pub mod fx;
mod lifecycle;
pub mod meters;
pub mod plan;
pub mod rates;
pub mod registry;
pub mod tax;
pub mod terms;
pub mod zone;

pub use crate::catalog::conflicts::{Conflict, ConflictKind, Outcome};
use crate::catalog::fx::FxTable;
pub use crate::catalog::plan::Plan;
use crate::catalog::tax::TaxTable;
use crate::catalog::zone::ZonedCycle;
use crate::pricing::discount::Coupon;
pub use error::CatalogError;
pub use terms::{Fx, Terms};

/// A customer's subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub plan: String,
    /// The billing cycle in the subscription's time zone (`interval`): the periods of
    /// `flat` fees.
    pub cycle: ZonedCycle,
    /// The periods of every other price (usage, minimums): `usage_interval`, by default the
    /// same as `cycle`.
    pub usage_cycle: ZonedCycle,
    /// In declaration order, the order they apply in.
    pub coupons: Vec<Coupon>,
    /// None: charges carry no tax.
    pub tax_region: Option<String>,
    pub tax_exempt: bool,
    /// The subscription covers usage windows starting in `[from_ms, to_ms)`: from its
    /// `effective_from` (or the beginning) to the customer's next subscription (or forever).
    pub from_ms: i64,
    pub to_ms: i64,
    /// Billing currency; none: the plan's.
    pub currency: Option<Currency>,
    /// `active`, or a `paused` or `cancelled` record: those cover nothing (`to_ms ==
    /// from_ms`) and end the record before them.
    pub state: SubscriptionState,
    /// The record's own end (`ends_at`); `i64::MAX` without one.
    pub ends_ms: i64,
    /// The trial part of a subscription with a trial (its first coupon is the trial's).
    pub trial: Option<Trial>,
    /// The product line (`line`; empty: the main one). A customer's lines run side by side,
    /// each its own chain of records; each meter is priced by one line.
    pub line: String,
    /// The plan version the record is pinned to; none: the version effective at each period
    /// start.
    pub plan_version: Option<u32>,
}

impl Subscription {
    /// Whether the record covers `at_ms` (at or after its start; `i64::MAX` asks for the
    /// latest record, which covers it unless it ended).
    pub fn covers(&self, at_ms: i64) -> bool {
        self.from_ms <= at_ms && (at_ms < self.to_ms || self.to_ms == i64::MAX)
    }

    /// The coupons that discount charges of `meter` in `period` of the billing cycle
    /// (`coupons_in` for another cycle).
    pub fn coupons_for(&self, period: &Period, meter: &MeterSlug) -> Vec<&Coupon> {
        self.coupons_in(&self.cycle, period, meter)
    }

    /// The coupons that discount charges of `meter` in `period` of `cycle` (durations count
    /// periods of that cycle).
    pub fn coupons_in(
        &self,
        cycle: &ZonedCycle,
        period: &Period,
        meter: &MeterSlug,
    ) -> Vec<&Coupon> {
        self.coupons
            .iter()
            .filter(|c| terms::coupon_applies(c, cycle, period, meter))
            .collect()
    }

    /// The cycle that places charges of `price`: a `flat` fee's periods are the billing
    /// cycle's, every other price's the usage cycle's.
    pub fn cycle_for(&self, price: Option<&crate::pricing::Price>) -> ZonedCycle {
        match price.map(|p| &p.model) {
            Some(crate::pricing::PriceModel::Flat { .. }) => self.cycle,
            _ => self.usage_cycle,
        }
    }

    /// The distinct cycles of the subscription: the billing cycle, and the usage cycle when
    /// it differs.
    pub fn cycles(&self) -> Vec<ZonedCycle> {
        if self.usage_cycle == self.cycle {
            vec![self.cycle]
        } else {
            vec![self.cycle, self.usage_cycle]
        }
    }
}

/// The subscription a usage row belongs to, as the fold needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage<'a> {
    pub plan: &'a str,
    /// The pinned version; none: the version effective at the part's start.
    pub plan_version: Option<u32>,
    /// The cycle whose periods hold the row's meter.
    pub cycle: ZonedCycle,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The declared plans validated and grouped by id, each plan's versions sorted by
/// `effective_from`; a version or an instant declared twice, or a later `effective_from`
/// without a higher version, is refused.
fn plan_versions(
    plans: Vec<PlanSpec>,
    meters: &[Meter],
) -> Result<HashMap<String, Vec<Plan>>, ConfigError> {
    let mut by_id: HashMap<String, Vec<(usize, Plan)>> = HashMap::new();
    for (i, spec) in plans.into_iter().enumerate() {
        let plan = crate::catalog::plan::validate(spec, i, meters)?;
        let versions = by_id.entry(plan.id.clone()).or_default();
        check_new_version(i, &plan, versions)?;
        versions.push((i, plan));
    }
    let mut by_id: HashMap<String, Vec<Plan>> = by_id
        .into_iter()
        .map(|(id, v)| (id, v.into_iter().map(|(_, p)| p).collect()))
        .collect();
    for versions in by_id.values_mut() {
        versions.sort_by_key(|p| p.effective_from_ms);
        if versions.windows(2).any(|w| w[1].version <= w[0].version) {
            return Err(ConfigError::invalid(
                "plans",
                format!(
                    "plan {}: a later effective_from needs a higher version",
                    versions[0].id
                ),
            ));
        }
    }
    Ok(by_id)
}

/// Refuses `plans[i]` when an earlier entry of the same plan (`versions`, with their
/// indexes) declares its version or takes effect at its instant.
fn check_new_version(i: usize, plan: &Plan, versions: &[(usize, Plan)]) -> Result<(), ConfigError> {
    if let Some((first, _)) = versions.iter().find(|(_, p)| p.version == plan.version) {
        return Err(ConfigError::invalid(
            format!("plans[{i}].version"),
            format!(
                "plan {} version {} is already declared by plans[{first}]; versions are \
                 immutable, a change must be a new version",
                plan.id, plan.version
            ),
        ));
    }
    if let Some((first, _)) = versions
        .iter()
        .find(|(_, p)| p.effective_from_ms == plan.effective_from_ms)
    {
        return Err(ConfigError::invalid(
            format!("plans[{i}].effective_from"),
            format!(
                "plan {} version {} takes effect at the same instant as plans[{first}]",
                plan.id, plan.version
            ),
        ));
    }
    Ok(())
}

/// The declared subscriptions validated against the plans and grouped per customer, each
/// customer's lines chained and checked.
fn subscriptions_by_customer(
    subs: Vec<SubscriptionSpec>,
    by_id: &HashMap<String, Vec<Plan>>,
    meters: &[Meter],
) -> Result<HashMap<CustomerId, Vec<Subscription>>, ConfigError> {
    let mut subscriptions: HashMap<CustomerId, Vec<Subscription>> = HashMap::new();
    for (i, s) in subs.into_iter().enumerate() {
        if !by_id.contains_key(&s.plan) {
            return Err(ConfigError::invalid(
                format!("subscriptions[{i}].plan"),
                format!("no plan {:?}", s.plan),
            ));
        }
        let (customer, sub) = validate_subscription(i, s, meters)?;
        if let Some(v) = sub.plan_version {
            if !by_id[&sub.plan].iter().any(|p| p.version == v) {
                return Err(ConfigError::invalid(
                    format!("subscriptions[{i}].plan_version"),
                    format!("plan {} has no version {v}", sub.plan),
                ));
            }
        }
        let list = subscriptions.entry(customer.clone()).or_default();
        if list
            .iter()
            .any(|o| o.from_ms == sub.from_ms && o.line == sub.line)
        {
            return Err(ConfigError::invalid(
                format!("subscriptions[{i}].effective_from"),
                format!("{customer} already has a subscription from this instant"),
            ));
        }
        list.push(sub);
    }
    for (customer, list) in &mut subscriptions {
        *list = lifecycle::chain_lines(std::mem::take(list));
        lifecycle::check_lines(customer, list, by_id)?;
    }
    Ok(subscriptions)
}

/// The plans rule 2 and rule 3 of [`conflicts`] leave: the accepted versions per plan id,
/// every plan id stored (accepted or not), and the plans with a version that does not read
/// or validate (plan id to why): their subscribers are quarantined, never priced on another
/// version.
type RecordedPlans = (
    HashMap<String, Vec<Plan>>,
    BTreeSet<String>,
    BTreeMap<String, String>,
);

/// Rule 2 of [`conflicts`]: the stored plan versions (rule 1 already applied, so one body
/// per version), in recorded order, each validated against the stored meters and against the
/// versions of its plan accepted before it; one that does not fit them is set aside and
/// reported. One that does not validate against the stored meters is set aside too, and its
/// plan is returned as broken (rule 3: its subscribers are quarantined).
fn plan_versions_in_recorded_order(
    plans: Vec<PlanSpec>,
    meters: &[Meter],
    conflicts: &mut Vec<Conflict>,
) -> RecordedPlans {
    let mut by_id: HashMap<String, Vec<Plan>> = HashMap::new();
    let mut ids = BTreeSet::new();
    let mut broken = BTreeMap::new();
    for (i, spec) in plans.into_iter().enumerate() {
        let identity = format!("plan {} v{}", spec.id, spec.version);
        ids.insert(spec.id.clone());
        let id = spec.id.clone();
        let refused = match crate::catalog::plan::validate(spec, i, meters) {
            Ok(plan) => {
                let versions = by_id.entry(plan.id.clone()).or_default();
                match fits(&plan, versions) {
                    Ok(()) => {
                        versions.push(plan);
                        versions.sort_by_key(|p| p.effective_from_ms);
                        None
                    }
                    Err(why) => Some(why),
                }
            }
            Err(e) => {
                let why = format!("it does not validate against the stored meters: {e}");
                broken
                    .entry(id)
                    .or_insert_with(|| format!("{identity}: {why}"));
                Some(format!("{why}; the plan's subscribers are quarantined"))
            }
        };
        if let Some(detail) = refused {
            conflicts.push(Conflict {
                kind: ConflictKind::Plan,
                outcome: Outcome::SetAside,
                identity,
                detail,
            });
        }
    }
    by_id.retain(|_, v| !v.is_empty());
    (by_id, ids, broken)
}

/// Why `plan` cannot join the versions of its plan recorded before it, if it cannot.
fn fits(plan: &Plan, versions: &[Plan]) -> Result<(), String> {
    for p in versions {
        let why = if p.version == plan.version {
            "it declares the same version"
        } else if p.effective_from_ms == plan.effective_from_ms {
            "it takes effect at the same instant"
        } else if (p.effective_from_ms < plan.effective_from_ms) != (p.version < plan.version) {
            "a later effective_from needs a higher version"
        } else {
            continue;
        };
        return Err(format!(
            "{why} as version {} recorded before it (plan {})",
            p.version, plan.id
        ));
    }
    Ok(())
}

/// Rule 3 of [`conflicts`]: the stored subscription records grouped per customer, each
/// customer's records validated alone (against the accepted plan versions and the rates); a
/// customer whose records do not build is quarantined (returned with why) instead of refusing
/// the whole catalog.
fn subscriptions_per_customer(
    subs: Vec<SubscriptionSpec>,
    by_id: &HashMap<String, Vec<Plan>>,
    meters: &[Meter],
    rates: (&TaxTable, &FxTable),
) -> (
    HashMap<CustomerId, Vec<Subscription>>,
    BTreeMap<String, String>,
) {
    let mut grouped: BTreeMap<String, Vec<SubscriptionSpec>> = BTreeMap::new();
    for s in subs {
        grouped.entry(s.customer.clone()).or_default().push(s);
    }
    let mut subscriptions = HashMap::new();
    let mut quarantined = BTreeMap::new();
    for (customer, list) in grouped {
        let built = subscriptions_by_customer(list, by_id, meters).and_then(|mut m| {
            for (c, l) in &m {
                check_taxes(rates.0, by_id, c, l)?;
                check_fx(rates.1, by_id, c, l)?;
            }
            Ok(m.drain().collect::<Vec<_>>())
        });
        match built {
            Ok(lists) => subscriptions.extend(lists),
            Err(e) => {
                quarantined.insert(customer, e.to_string());
            }
        }
    }
    (subscriptions, quarantined)
}

/// Whether the customers on `rater.default_plan` are quarantined, and why: a version of it
/// does not read or validate (`broken`), or none of its versions was accepted. Refused when
/// it names a plan never stored (a configuration error, not a conflict).
fn default_plan_quarantine(
    rater: &RaterConfig,
    by_id: &HashMap<String, Vec<Plan>>,
    ids: &BTreeSet<String>,
    broken: &BTreeMap<String, String>,
) -> Result<Option<String>, ConfigError> {
    let Some(p) = &rater.default_plan else {
        return Ok(None);
    };
    if !ids.contains(p) {
        return Err(ConfigError::invalid(
            "rater.default_plan",
            format!("no plan {p:?}"),
        ));
    }
    Ok(match broken.get(p) {
        Some(why) => Some(format!(
            "{why}; customers on the default plan are left out of rating rather than priced on \
             another version"
        )),
        None if !by_id.contains_key(p) => Some("every stored version was set aside".into()),
        None => None,
    })
}

/// Rule 3 of [`conflicts`] for plans: every customer with a record on a `broken` plan (a
/// version of it does not read or validate), with why; never priced on another version.
fn subscribers_of(
    subs: &[SubscriptionSpec],
    broken: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut quarantined = BTreeMap::new();
    for s in subs {
        if let Some(why) = broken.get(&s.plan) {
            quarantined.entry(s.customer.clone()).or_insert_with(|| {
                format!(
                    "{why}; the customer's records on plan {} are left out rather than priced on \
                     another version",
                    s.plan
                )
            });
        }
    }
    quarantined
}

/// Refuses a subscription billed in another currency than a version of its plan without FX
/// rates for that pair (errors name the customer).
fn check_fx(
    fx: &FxTable,
    plans: &HashMap<String, Vec<Plan>>,
    customer: &CustomerId,
    list: &[Subscription],
) -> Result<(), ConfigError> {
    for sub in list {
        let Some(to) = sub.currency else { continue };
        let versions = plans.get(&sub.plan).map_or(&[][..], Vec::as_slice);
        for p in versions.iter().filter(|p| p.currency != to) {
            if !fx.knows(p.currency, to) {
                return Err(ConfigError::invalid(
                    format!("subscriptions.{customer}.currency"),
                    format!(
                        "plan {} v{} is priced in {} and no fx_rates entry converts it to {}",
                        p.id,
                        p.version,
                        p.currency.code(),
                        to.code()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses a taxed subscription whose region lacks a rate for a tax code its plan's versions
/// use (errors name the customer).
fn check_taxes(
    taxes: &TaxTable,
    plans: &HashMap<String, Vec<Plan>>,
    customer: &CustomerId,
    list: &[Subscription],
) -> Result<(), ConfigError> {
    for sub in list {
        let Some(region) = &sub.tax_region else {
            continue;
        };
        let versions = plans.get(&sub.plan).map_or(&[][..], Vec::as_slice);
        for price in versions.iter().flat_map(|p| p.prices.values()) {
            if !taxes.knows(region, &price.tax_code) {
                return Err(ConfigError::invalid(
                    format!("subscriptions.{customer}.tax_region"),
                    format!(
                        "no tax_rates entry for region {region:?} and code {:?} (plan {})",
                        price.tax_code, sub.plan
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Plans and subscriptions.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Versions per plan id, sorted by `effective_from_ms`.
    plans: HashMap<String, Vec<Plan>>,
    /// Per customer, sorted by `from_ms`, contiguous.
    subscriptions: HashMap<CustomerId, Vec<Subscription>>,
    default_plan: Option<String>,
    taxes: TaxTable,
    fx: FxTable,
    /// `[features] tax = false`: no charge carries tax.
    tax_off: bool,
    /// Customers left out of rating because their stored records conflict, with why
    /// ([`conflicts`], rule 3): no subscription and no default plan covers them.
    quarantined: BTreeMap<String, String>,
    /// Why the customers on the default plan are left out of rating, if they are: a version
    /// of the default plan does not read or validate ([`conflicts`], rule 3); `default_plan`
    /// is then none.
    default_quarantine: Option<String>,
    /// The stored records set aside and the customers quarantined by the build, in a stable
    /// order ([`Catalog::from_stored`]).
    conflicts: Vec<Conflict>,
}

impl Catalog {
    /// Validates the configuration against the declared meters.
    pub fn new(
        plans: Vec<PlanSpec>,
        subs: Vec<SubscriptionSpec>,
        rater: &RaterConfig,
        meters: &[Meter],
    ) -> Result<Catalog, ConfigError> {
        let by_id = plan_versions(plans, meters)?;
        let subscriptions = subscriptions_by_customer(subs, &by_id, meters)?;
        if let Some(p) = &rater.default_plan {
            if !by_id.contains_key(p) {
                return Err(ConfigError::invalid(
                    "rater.default_plan",
                    format!("no plan {p:?}"),
                ));
            }
        }
        Ok(Catalog {
            plans: by_id,
            subscriptions,
            default_plan: rater.default_plan.clone(),
            taxes: TaxTable::default(),
            fx: FxTable::default(),
            tax_off: false,
            quarantined: BTreeMap::new(),
            default_quarantine: None,
            conflicts: Vec::new(),
        })
    }

    /// The stored catalog, which never fails as a whole because of conflicting records
    /// ([`conflicts`]): `plans` in recorded order and `subscriptions` as stored (one body per
    /// identity: rule 1 is the reader's), with the stored meters and rates; `found` are the
    /// conflicts the reader already decided (set-aside bodies; `Quarantined` ones name
    /// customers whose records could not be read, or, of kind `Plan`, a plan id with a version
    /// that could not be read). A version that does not fit those recorded before it is set
    /// aside; a customer whose records do not build, or on a plan with a version that does not
    /// read or validate, is quarantined, each reported in [`Catalog::conflicts`]. Refused only
    /// when `rater.default_plan` names a plan never stored (a configuration error, not a
    /// conflict); if a version of it does not read or validate, the customers on the default
    /// plan are quarantined (reported).
    pub fn from_stored(
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
        rater: &RaterConfig,
        meters: &[Meter],
        (taxes, fx): (TaxTable, FxTable),
        found: Vec<Conflict>,
    ) -> Result<Catalog, ConfigError> {
        let mut conflicts = found;
        let (by_id, mut ids, mut broken) =
            plan_versions_in_recorded_order(plans, meters, &mut conflicts);
        for c in conflicts.iter().filter(|c| c.kind == ConflictKind::Plan) {
            if c.outcome == Outcome::Quarantined {
                ids.insert(c.identity.clone());
                broken
                    .entry(c.identity.clone())
                    .or_insert_with(|| c.detail.clone());
            }
        }
        let default_quarantine = default_plan_quarantine(rater, &by_id, &ids, &broken)?;
        let mut quarantined = subscribers_of(&subscriptions, &broken);
        let (mut subscriptions, more) =
            subscriptions_per_customer(subscriptions, &by_id, meters, (&taxes, &fx));
        for (customer, why) in more {
            quarantined.entry(customer).or_insert(why);
        }
        for c in conflicts
            .iter()
            .filter(|c| c.kind != ConflictKind::Plan && c.outcome == Outcome::Quarantined)
        {
            quarantined
                .entry(c.identity.clone())
                .or_insert_with(|| c.detail.clone());
        }
        subscriptions.retain(|c, _| !quarantined.contains_key(c.as_ref()));
        conflicts.retain(|c| c.outcome != Outcome::Quarantined);
        conflicts.extend(quarantined.iter().map(|(customer, why)| Conflict {
            kind: ConflictKind::Subscription,
            outcome: Outcome::Quarantined,
            identity: customer.clone(),
            detail: why.clone(),
        }));
        if let (Some(p), Some(why)) = (&rater.default_plan, &default_quarantine) {
            conflicts.push(Conflict {
                kind: ConflictKind::Plan,
                outcome: Outcome::Quarantined,
                identity: format!("customers on the default plan {p}"),
                detail: why.clone(),
            });
        }
        conflicts.sort();
        conflicts.dedup();
        Ok(Catalog {
            plans: by_id,
            subscriptions,
            default_plan: rater
                .default_plan
                .clone()
                .filter(|_| default_quarantine.is_none()),
            taxes,
            fx,
            tax_off: false,
            quarantined,
            default_quarantine,
            conflicts,
        })
    }

    /// The stored records set aside and the customers quarantined when this catalog was
    /// built ([`Catalog::from_stored`]; empty for a catalog of the file alone).
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// Why `customer` is left out of rating (its stored records conflict), if it is.
    pub fn quarantine_of(&self, customer: &str) -> Option<&str> {
        if let Some(why) = self.quarantined.get(customer) {
            return Some(why);
        }
        let why = self.default_quarantine.as_deref()?;
        let on_default = CustomerId::new(customer.to_owned())
            .map_or(true, |c| !self.subscriptions.contains_key(&c));
        on_default.then_some(why)
    }

    /// Adds the FX rates, checking that every subscription billed in another currency than
    /// a version of its plan has rates for that pair (errors name the subscription).
    pub fn with_fx(mut self, fx: FxTable) -> Result<Catalog, ConfigError> {
        let mut customers: Vec<&CustomerId> = self.subscriptions.keys().collect();
        customers.sort();
        for customer in customers {
            check_fx(&fx, &self.plans, customer, self.subscriptions_of(customer))?;
        }
        self.fx = fx;
        Ok(self)
    }

    /// Adds the tax rates, checking that every taxed subscription's region has a rate for
    /// every tax code its plan's versions use (errors name the subscription).
    pub fn with_taxes(mut self, taxes: TaxTable) -> Result<Catalog, ConfigError> {
        let mut customers: Vec<&CustomerId> = self.subscriptions.keys().collect();
        customers.sort();
        for customer in customers {
            check_taxes(
                &taxes,
                &self.plans,
                customer,
                self.subscriptions_of(customer),
            )?;
        }
        self.taxes = taxes;
        Ok(self)
    }

    /// The same catalog with taxes switched off (`[features] tax = false`): charges carry no
    /// tax line, whatever the subscriptions' tax regions.
    pub fn without_tax(mut self) -> Catalog {
        self.tax_off = true;
        self
    }

    /// What applies to one charge beyond its price: the subscription's coupons and tax.
    pub fn terms<'a>(
        &self,
        sub: &'a Subscription,
        plan: &Plan,
        period: &Period,
        meter: &MeterSlug,
    ) -> Terms<'a> {
        let tax = match (&sub.tax_region, plan.prices.get(meter)) {
            _ if self.tax_off => None,
            (Some(region), Some(price)) => {
                let rate = self.taxes.rate_at(region, &price.tax_code, period.start_ms);
                match (rate, sub.tax_exempt) {
                    (Some(mut r), true) => {
                        r.rate_percent = rust_decimal::Decimal::ZERO;
                        r.code = format!("{}:exempt", r.code);
                        Some(r)
                    }
                    (r, _) => r,
                }
            }
            _ => None,
        };
        let at_ms = period.start_ms.max(sub.from_ms);
        let fx = sub.currency.filter(|c| *c != plan.currency).map(|to| Fx {
            to,
            rate: self.fx.rate_at(plan.currency, to, at_ms),
        });
        let cycle = sub.cycle_for(plan.prices.get(meter));
        Terms {
            coupons: sub.coupons_in(&cycle, period, meter),
            tax,
            fx,
        }
    }

    /// Every plan version, by id then version.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        let mut ids: Vec<&String> = self.plans.keys().collect();
        ids.sort();
        ids.into_iter()
            .flat_map(|id| self.plans.get(id).into_iter().flatten())
    }

    /// The customers with subscriptions.
    pub fn customers(&self) -> impl Iterator<Item = &CustomerId> {
        self.subscriptions.keys()
    }

    /// The start of the period in force at `at_ms` for every customer without a subscription
    /// (the default plan's calendar-month cycle); `None` without a default plan.
    pub fn default_period_start(&self, at_ms: i64) -> Option<i64> {
        self.default_plan.as_ref()?;
        let cycle: ZonedCycle = BillingCycle::default().into();
        Some(cycle.period_containing(at_ms).start_ms)
    }

    /// Where a pass that re-rates every period ending after `horizon_ms` must start reading
    /// usage so that each of those periods is folded whole: the earliest start of a billing
    /// period (of the fee cycle or the usage cycle) of any subscription record that contains
    /// `horizon_ms`, or of a record's last period when the record ended before it but that
    /// period ends after it; at most `horizon_ms`. A quarter or a year of usage is read whole
    /// late in its period (reading only the last month would write a charge of that month's
    /// usage over the period's real one). Customers on the default plan have calendar months.
    pub fn periods_reach(&self, horizon_ms: i64) -> i64 {
        let mut reach = self.default_period_start(horizon_ms).unwrap_or(horizon_ms);
        for s in self.subscriptions.values().flatten() {
            if s.from_ms > horizon_ms || s.to_ms <= s.from_ms {
                continue; // starts later (read anyway), or covers nothing
            }
            let at = if s.to_ms == i64::MAX {
                horizon_ms
            } else {
                horizon_ms.min(s.to_ms - 1)
            };
            for cycle in [&s.cycle, &s.usage_cycle] {
                let period = cycle.period_containing(at);
                if period.end_ms > horizon_ms {
                    reach = reach.min(period.start_ms.max(s.from_ms));
                }
            }
        }
        reach.min(horizon_ms)
    }

    /// A customer's subscriptions, oldest first (empty: the default plan applies).
    pub fn subscriptions_of(&self, customer: &CustomerId) -> &[Subscription] {
        self.subscriptions.get(customer).map_or(&[], Vec::as_slice)
    }

    /// The customer's latest subscription, or the default plan.
    pub fn subscription(&self, customer: &CustomerId) -> Option<Cow<'_, Subscription>> {
        self.subscription_at(customer, i64::MAX)
    }

    /// The plan, billing cycle, start and end of the subscription covering `at_ms` (of the
    /// first line, by name, with one in force), without copying it; same rules as
    /// [`Catalog::subscription_at`].
    pub fn coverage_at(
        &self,
        customer: &CustomerId,
        at_ms: i64,
    ) -> Option<(&str, ZonedCycle, i64, i64)> {
        if self.quarantine_of(customer.as_ref()).is_some() {
            return None;
        }
        let first = self.first_start(customer);
        match self.in_force(customer, at_ms).first() {
            Some(s) => Some((s.plan.as_str(), s.cycle, s.from_ms, s.to_ms)),
            None if first.is_some_and(|f| f <= at_ms) => None,
            None => self.default_plan.as_deref().map(|p| {
                let to_ms = first.unwrap_or(i64::MAX);
                (p, BillingCycle::default().into(), i64::MIN, to_ms)
            }),
        }
    }

    /// What the fold needs of the subscription that prices `meter` at `at_ms`
    /// ([`Catalog::subscription_for`]): its plan id and pinned version, the cycle that places
    /// usage of `meter` (the usage cycle, or the billing cycle for a `flat` fee), and its
    /// start and end. None: no subscription covers `at_ms`.
    pub fn coverage_for(
        &self,
        customer: &CustomerId,
        meter: &MeterSlug,
        at_ms: i64,
    ) -> Option<Coverage<'_>> {
        let sub = self.subscription_for(customer, meter, at_ms)?;
        let price = self.plan_of(&sub, at_ms).and_then(|p| p.prices.get(meter));
        let (plan, plan_version) = match sub {
            Cow::Borrowed(s) => (s.plan.as_str(), s.plan_version),
            Cow::Owned(_) => (self.default_plan.as_deref()?, None),
        };
        Some(Coverage {
            plan,
            plan_version,
            cycle: sub.cycle_for(price),
            from_ms: sub.from_ms,
            to_ms: sub.to_ms,
        })
    }

    /// Per line (by name), the record in force at `at_ms`.
    fn in_force(&self, customer: &CustomerId, at_ms: i64) -> Vec<&Subscription> {
        self.subscriptions_of(customer)
            .iter()
            .filter(|s| s.covers(at_ms))
            .collect()
    }

    /// Where a customer's first record starts (none without one): the default plan covers
    /// the time before it.
    fn first_start(&self, customer: &CustomerId) -> Option<i64> {
        self.subscriptions_of(customer)
            .iter()
            .map(|s| s.from_ms)
            .min()
    }

    /// The subscription that prices `meter` at `at_ms`: of the lines in force then, the one
    /// whose plan version prices the meter (lines of a customer never price the same meter,
    /// `lifecycle::check_lines`), else the first in force; the default plan before the
    /// customer's first record.
    pub fn subscription_for(
        &self,
        customer: &CustomerId,
        meter: &MeterSlug,
        at_ms: i64,
    ) -> Option<Cow<'_, Subscription>> {
        let lines = self.in_force(customer, at_ms);
        match lines.iter().find(|s| {
            self.plan_of(s, at_ms)
                .is_some_and(|p| p.prices.contains_key(meter))
        }) {
            Some(s) => Some(Cow::Borrowed(*s)),
            None => self.subscription_at(customer, at_ms),
        }
    }

    /// The subscription covering `at_ms` (of the first line, by name, with one in force;
    /// borrowed: a pass looks it up once per charge); before a customer's first record (or
    /// without one), the default plan on a calendar-month cycle, untaxed; none in a gap
    /// (after a cancellation or an end, while paused).
    pub fn subscription_at(
        &self,
        customer: &CustomerId,
        at_ms: i64,
    ) -> Option<Cow<'_, Subscription>> {
        if self.quarantine_of(customer.as_ref()).is_some() {
            return None;
        }
        if let Some(s) = self.in_force(customer, at_ms).first() {
            return Some(Cow::Borrowed(*s));
        }
        let first = self.first_start(customer);
        if first.is_some_and(|f| f <= at_ms) {
            return None;
        }
        self.default_plan.clone().map(|plan| {
            Cow::Owned(Subscription {
                plan,
                cycle: BillingCycle::default().into(),
                usage_cycle: BillingCycle::default().into(),
                coupons: vec![],
                tax_region: None,
                tax_exempt: false,
                from_ms: i64::MIN,
                to_ms: first.unwrap_or(i64::MAX),
                currency: None,
                state: SubscriptionState::Active,
                ends_ms: i64::MAX,
                trial: None,
                line: String::new(),
                plan_version: None,
            })
        })
    }

    /// The plan version that prices `sub` at `at_ms`: its pinned `plan_version`, or (not
    /// pinned) the version effective at `at_ms`.
    pub fn plan_of(&self, sub: &Subscription, at_ms: i64) -> Option<&Plan> {
        self.plan_version(&sub.plan, sub.plan_version, at_ms)
    }

    /// Version `pinned` of `plan`, or (none) the version effective at `at_ms`.
    pub fn plan_version(&self, plan: &str, pinned: Option<u32>, at_ms: i64) -> Option<&Plan> {
        match pinned {
            Some(v) => self.plans.get(plan)?.iter().find(|p| p.version == v),
            None => self.plan_at(plan, at_ms),
        }
    }

    /// Every instant in `[from_ms, to_ms)` where a customer's billing changes: its
    /// subscriptions' starts and ends and their periods' starts, per customer with a
    /// subscription (customers on the default plan change at UTC month starts only).
    pub fn boundaries(&self, from_ms: i64, to_ms: i64) -> Vec<(&CustomerId, Vec<i64>)> {
        let mut out = Vec::new();
        for (customer, subs) in &self.subscriptions {
            let mut bounds = Vec::new();
            for s in subs {
                let (lo, hi) = (from_ms.max(s.from_ms), to_ms.min(s.to_ms));
                bounds.extend(
                    [s.from_ms, s.to_ms]
                        .into_iter()
                        .filter(|b| (from_ms..to_ms).contains(b)),
                );
                if lo >= hi {
                    continue;
                }
                for cycle in s.cycles() {
                    let mut period = cycle.period_containing(lo);
                    // periods are at least a day long; the bound keeps a bad cycle from looping
                    for _ in 0..1000 {
                        if period.start_ms >= hi {
                            break;
                        }
                        if period.start_ms >= lo {
                            bounds.push(period.start_ms);
                        }
                        period = cycle.next(&period);
                    }
                }
            }
            out.push((customer, bounds));
        }
        out
    }

    /// Where a line of the customer's subscriptions ends for good (a cancellation, or the
    /// `ends_at` of its last record): the billing period containing it is cut there and
    /// invoiced from then on. None while it runs (or is paused), and without one.
    pub fn final_end(&self, customer: &CustomerId, line: &str) -> Option<i64> {
        let records: Vec<&Subscription> = self
            .subscriptions_of(customer)
            .iter()
            .filter(|s| s.line == line)
            .collect();
        lifecycle::final_end(&records)
    }

    /// The record that cancels `customer`'s subscription: at `at_ms`, or at the end of the
    /// billing period containing it (`at_period_end`); refused (with why) when no
    /// subscription of the customer covers `at_ms`.
    pub fn cancellation(
        &self,
        customer: &CustomerId,
        line: &str,
        at_ms: i64,
        at_period_end: bool,
    ) -> Result<SubscriptionSpec, String> {
        let list = self.subscriptions_of(customer);
        let Some(sub) = list.iter().find(|s| s.line == line && s.covers(at_ms)) else {
            return Err(format!(
                "{customer} has no subscription{} in force at {}",
                if line.is_empty() {
                    String::new()
                } else {
                    format!(" of line {line:?}")
                },
                tally_domain::period::rfc3339(at_ms)
            ));
        };
        // the period's end, or the record's own end (`ends_at`) if sooner; not the record's
        // next part (a trial's end, a scheduled change): those do not end the period
        let end_ms = if at_period_end {
            sub.cycle.period_containing(at_ms).end_ms.min(sub.ends_ms)
        } else {
            at_ms
        };
        let effective_from = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(end_ms)
            .ok_or_else(|| format!("{end_ms} is not an instant"))?;
        Ok(SubscriptionSpec {
            customer: customer.to_string(),
            plan: sub.plan.clone(),
            billing_anchor_day: 1,
            coupons: vec![],
            tax_region: None,
            tax_exempt: false,
            effective_from: Some(effective_from),
            currency: None,
            time_zone: None,
            ends_at: None,
            state: SubscriptionState::Cancelled,
            trial: None,
            interval: None,
            billing_anchor_month: None,
            usage_interval: None,
            line: (!line.is_empty()).then(|| line.to_owned()),
            plan_version: None,
        })
    }

    /// The version of `plan` effective at `at_ms`.
    pub fn plan_at(&self, plan: &str, at_ms: i64) -> Option<&Plan> {
        self.plans
            .get(plan)?
            .iter()
            .rev()
            .find(|p| p.effective_from_ms <= at_ms)
    }
}

/// The active records of `record`'s customer and line that `stored` holds for instants after
/// it, when `record` is a cancellation, in time order: the first of them would resume billing
/// after the cancellation (a later active record restarts a line), so a cancellation does not
/// end a line before records stored for later instants (a scheduled migration or restart).
/// Pure; the API refuses such a cancellation (`later_records`, docs/PRICING.md).
pub fn records_after_cancellation<'a>(
    stored: &'a [SubscriptionSpec],
    record: &SubscriptionSpec,
) -> Vec<&'a SubscriptionSpec> {
    if record.state != SubscriptionState::Cancelled {
        return Vec::new();
    }
    let line = |s: &SubscriptionSpec| s.line.clone().unwrap_or_default();
    let mut later: Vec<&SubscriptionSpec> = stored
        .iter()
        .filter(|s| {
            s.customer == record.customer
                && line(s) == line(record)
                && s.state.is_active()
                && s.effective_from > record.effective_from
        })
        .collect();
    later.sort_by_key(|s| s.effective_from);
    later
}

#[cfg(test)]
mod tests;
