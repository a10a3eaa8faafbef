//! The one loader of the stored catalog: the catalog as stored now, built from the stored
//! meters ([`crate::store::registry`]), tax and FX rates ([`crate::store::rates`]) and plan
//! versions and subscriptions ([`crate::store::catalog`]), read in that order; and every
//! change that must be checked against all of them before it is appended (a plan version, a
//! subscription, a cancellation, a meter version).
//!
//! It owns the order in which the stores are read and the one-change-at-a-time rule; the
//! rules themselves are [`crate::catalog`]'s. The stores it calls never call it or each other.

use clickhouse::Client;
use tally_domain::Meter;
use tally_platform::ConfigError;

use crate::catalog::meters::MeterEntry;
use crate::catalog::rates::Rates;
use crate::catalog::registry::Novelty;
use crate::catalog::Catalog;
use crate::config::{PlanSpec, RaterConfig, SubscriptionSpec};
use crate::store::catalog::{body, bootstrap, load, subscription_identity, Bootstrapped};
use crate::store::error::CatalogStoreError;
use crate::store::registry::Appended;
use crate::store::{rates, registry};

/// Catalog changes made by this process, one at a time (load, check against everything
/// stored, append): two requests that each pass the checks alone but not together (two lines
/// pricing one meter, two records of one line at one instant) are decided in turn, so the
/// second is refused instead of both being stored and every later catalog build failing.
/// Between two API instances the window remains (docs/PRICING.md, "Not yet").
static ONE_CHANGE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a catalog is built from besides the stored entries: the `[rater]` settings of the
/// configuration file. The meters are the stored ones ([`crate::store::registry`]): the latest
/// version of each, so a plan naming a meter that is not stored is refused; the tax and FX
/// rates are the stored ones ([`crate::store::rates`]).
#[derive(Debug, Clone)]
pub struct CatalogSource {
    pub rater: RaterConfig,
    /// `[features]`: with `tax = false` the catalog prices without tax.
    pub features: tally_platform::Features,
}

/// The stored entries a catalog is validated against: the meters and the rates.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub meters: Vec<Meter>,
    pub rates: Rates,
}

impl Stored {
    /// The meters and rates as stored now.
    pub async fn load(db: &Client) -> Result<Stored, CatalogStoreError> {
        Ok(Stored {
            meters: registry::meters(db).await?,
            rates: rates::load(db).await?,
        })
    }
}

/// Refuses a record that takes effect at or before the start of a fee billed in advance
/// already charged by `now_ms` ([`crate::rating::recurring::advance_removed`]).
fn refuse_backdated(
    before: &Catalog,
    after: &Catalog,
    sub: &SubscriptionSpec,
    now_ms: i64,
) -> Result<(), CatalogStoreError> {
    let (Some(from), Ok(customer)) = (
        sub.effective_from,
        tally_domain::CustomerId::new(sub.customer.clone()),
    ) else {
        return Ok(());
    };
    let from_ms = from.timestamp_millis();
    let removed =
        crate::rating::recurring::advance_removed(before, after, &customer, from_ms, now_ms);
    let Some((_, part_ms, meter, plan, version)) = removed.first() else {
        return Ok(());
    };
    let at = |ms: i64| tally_domain::period::rfc3339(ms);
    Err(CatalogStoreError::Backdated(format!(
        "subscription.effective_from: {} is at or before {}, where the fee of {meter} billed in \
         advance (plan {plan} version {version}) began and was charged; a change from then would \
         leave that fee billed in full. Make the change take effect after {} (the unused part \
         of the fee is then credited), or credit the fee on the invoicer",
        at(from_ms),
        at(*part_ms),
        at(*part_ms)
    )))
}

/// Refuses a cancellation before active records of its line stored for later instants
/// ([`crate::catalog::records_after_cancellation`]): the first of them would resume billing.
fn refuse_before_later_records(
    stored: &[SubscriptionSpec],
    sub: &SubscriptionSpec,
) -> Result<(), CatalogStoreError> {
    let later = crate::catalog::records_after_cancellation(stored, sub);
    let (Some(first), Some(last)) = (later.first(), later.last()) else {
        return Ok(());
    };
    let at = |s: &SubscriptionSpec| s.effective_from.map(|t| t.to_rfc3339()).unwrap_or_default();
    Err(CatalogStoreError::LaterRecords(format!(
        "subscription.effective_from: {} of line {:?} has {} record(s) stored from {} on (plan \
         {}); a cancellation at {} would not end the line: the record at {} resumes billing. \
         Cancel at or after {}, or pause (state paused) if the later record is to resume",
        sub.customer,
        sub.line.clone().unwrap_or_default(),
        later.len(),
        at(first),
        first.plan,
        at(sub),
        at(first),
        at(last)
    )))
}

impl CatalogSource {
    /// The catalog as stored now.
    pub async fn current(&self, db: &Client) -> Result<Catalog, CatalogStoreError> {
        let stored = Stored::load(db).await?;
        let (plans, subscriptions) = load(db).await?;
        self.build(plans, subscriptions, &stored)
    }

    /// The catalog of these entries, validated against the stored meters and priced with the
    /// stored rates.
    pub fn build(
        &self,
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
        stored: &Stored,
    ) -> Result<Catalog, CatalogStoreError> {
        let catalog = Catalog::new(plans, subscriptions, &self.rater, &stored.meters)?
            .with_taxes(stored.rates.tax_table())?
            .with_fx(stored.rates.fx_table())?;
        Ok(if self.features.tax {
            catalog
        } else {
            catalog.without_tax()
        })
    }

    /// Appends a subscription (a customer's plan from `effective_from` on) after checking it
    /// against everything stored (errors name the field as `subscription.plan`); an identical
    /// re-post is accepted as is.
    pub async fn add_subscription(
        &self,
        db: &Client,
        sub: SubscriptionSpec,
        now_ms: i64,
    ) -> Result<Bootstrapped, CatalogStoreError> {
        let _turn = ONE_CHANGE_AT_A_TIME.lock().await;
        let kept = Stored::load(db).await?;
        let (plans, mut subscriptions) = load(db).await?;
        let id = subscription_identity(&sub);
        let stored = subscriptions
            .iter()
            .find(|s| subscription_identity(s) == id);
        if stored.is_some_and(|s| body(s) != body(&sub)) {
            return Err(CatalogStoreError::Conflict {
                setting: "subscription".into(),
                detail: format!(
                    "the subscription of {} from {:?} is already stored with different content; \
                     add one with a later effective_from instead",
                    id.0, id.1
                ),
            });
        }
        if stored.is_none() {
            refuse_before_later_records(&subscriptions, &sub)?;
            let before = subscriptions.clone();
            subscriptions.insert(0, sub.clone());
            let after = self
                .build(plans.clone(), subscriptions, &kept)
                .map_err(|e| renamed(e, "subscriptions[0]", "subscription"))?;
            let before = self.build(plans, before, &kept)?;
            refuse_backdated(&before, &after, &sub, now_ms)?;
        }
        bootstrap(db, &[], std::slice::from_ref(&sub), now_ms).await
    }

    /// Cancels a customer's subscription at `at_ms` or at the end of the period containing
    /// it: appends a `cancelled` record (append-only, like any subscription record) and
    /// returns it. Refused as [`CatalogStoreError::NotFound`] when nothing is in force then.
    pub async fn cancel_subscription(
        &self,
        db: &Client,
        customer: &tally_domain::CustomerId,
        line: &str,
        at_ms: i64,
        at_period_end: bool,
        now_ms: i64,
    ) -> Result<(SubscriptionSpec, Bootstrapped), CatalogStoreError> {
        let record = self
            .current(db)
            .await?
            .cancellation(customer, line, at_ms, at_period_end)
            .map_err(CatalogStoreError::NotFound)?;
        let added = self.add_subscription(db, record.clone(), now_ms).await?;
        Ok((record, added))
    }

    /// Appends a new plan version after checking it against everything stored (errors name
    /// the field as `plan.prices[0].tiers`); an identical re-post is accepted as is.
    pub async fn add_plan(
        &self,
        db: &Client,
        plan: PlanSpec,
        now_ms: i64,
    ) -> Result<Bootstrapped, CatalogStoreError> {
        let _turn = ONE_CHANGE_AT_A_TIME.lock().await;
        let kept = Stored::load(db).await?;
        let (mut plans, subscriptions) = load(db).await?;
        let stored = plans
            .iter()
            .find(|p| p.id == plan.id && p.version == plan.version);
        if stored.is_some_and(|p| body(p) != body(&plan)) {
            return Err(CatalogStoreError::Conflict {
                setting: "plan".into(),
                detail: format!(
                    "plan {} version {} is already stored with different content; versions are \
                     immutable, a change must be a new version",
                    plan.id, plan.version
                ),
            });
        }
        if stored.is_none() {
            plans.insert(0, plan.clone());
            self.build(plans, subscriptions, &kept)
                .map_err(|e| renamed(e, "plans[0]", "plan"))?;
        }
        bootstrap(db, std::slice::from_ref(&plan), &[], now_ms).await
    }

    /// Appends a meter version (`POST /v1/meters`; errors name `meter.*`) after checking that
    /// every stored plan and subscription is still valid with it (a plan's dimensions must
    /// stay group-by names of the meter).
    pub async fn add_meter(
        &self,
        db: &Client,
        entry: &MeterEntry,
        now_ms: i64,
    ) -> Result<Appended, CatalogStoreError> {
        let mut r = registry::load(db).await?;
        if r.add_meter(entry, "meter")? != Novelty::New {
            return Ok(Appended::default());
        }
        let (plans, subscriptions) = load(db).await?;
        let stored = Stored {
            meters: r.meters(),
            rates: rates::load(db).await?,
        };
        self.build(plans, subscriptions, &stored).map_err(|e| {
            CatalogStoreError::Invalid(ConfigError::invalid(
                "meter",
                format!(
                    "meter {} version {} would invalidate the stored catalog: {e}",
                    entry.slug, entry.version
                ),
            ))
        })?;
        registry::append_meter(db, entry, now_ms).await
    }
}

/// An error about the entry validated at index 0 of the stored list, renamed after the
/// request body (`plans[0].prices[1].tiers` -> `plan.prices[1].tiers`).
fn renamed(e: CatalogStoreError, from: &str, to: &str) -> CatalogStoreError {
    match e {
        CatalogStoreError::Invalid(ConfigError::Invalid { setting, detail }) => {
            CatalogStoreError::Invalid(ConfigError::Invalid {
                setting: setting.replacen(from, to, 1),
                detail,
            })
        }
        other => other,
    }
}
