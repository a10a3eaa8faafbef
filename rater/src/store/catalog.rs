//! The catalog in ClickHouse, append-only (`catalog_plans`, `catalog_subscriptions`,
//! migration 0008). The configuration file bootstraps it: each plan version and subscription
//! of the file is appended unless the same identity is already stored with the same body; a
//! stored identity with a different body is refused (versions are immutable; a change is a
//! new version). The rater then builds its catalog from what is stored, so entries appended
//! by earlier files (or other tools) stay in force, validated against the stored meters
//! ([`crate::store::registry`]) and priced with the stored tax and FX rates
//! ([`crate::store::rates`]). It never updates or deletes a stored row.

use std::collections::BTreeMap;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_platform::store::datetime_secs;

use tally_domain::Meter;
use tally_platform::ConfigError;

use crate::catalog::rates::Rates;
use crate::catalog::Catalog;
use crate::config::{PlanSpec, RaterConfig, SubscriptionSpec};

/// Catalog changes made by this process, one at a time (load, check against everything
/// stored, append): two requests that each pass the checks alone but not together (two lines
/// pricing one meter, two records of one line at one instant) are decided in turn, so the
/// second is refused instead of both being stored and every later catalog build failing.
/// Between two API instances the window remains (docs/PRICING.md, "Not yet").
static ONE_CHANGE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Why the stored catalog cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogStoreError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The file changes an entry already stored.
    #[error("setting `{setting}`: {detail}")]
    Conflict { setting: String, detail: String },
    /// The stored catalog (or an addition to it) is not valid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The entry an addition refers to is not stored (an agent's customer).
    #[error("{0}")]
    NotFound(String),
    /// A stored body no longer parses.
    #[error("stored catalog entry {identity}: {detail}")]
    Unreadable { identity: String, detail: String },
}

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct PlanRow {
    plan_id: String,
    version: u32,
    body: String,
}

#[derive(clickhouse::Row, Serialize)]
struct PlanInsert<'a> {
    plan_id: &'a str,
    version: u32,
    body: &'a str,
    recorded_at: u32,
}

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct SubscriptionRow {
    customer: String,
    effective_from: String,
    body: String,
}

#[derive(clickhouse::Row, Serialize)]
struct SubscriptionInsert<'a> {
    customer: &'a str,
    effective_from: &'a str,
    body: &'a str,
    recorded_at: u32,
}

/// What a bootstrap appended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bootstrapped {
    pub plans_appended: usize,
    pub subscriptions_appended: usize,
}

fn body<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A record's identity: customer and `effective_from` (RFC 3339, milliseconds), the
/// latter followed by `#<line>` for a record of a named line.
fn subscription_identity(s: &SubscriptionSpec) -> (String, String) {
    let mut from = s
        .effective_from
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    if let Some(line) = &s.line {
        from = format!("{from}#{line}");
    }
    (s.customer.clone(), from)
}

/// Appends the file's entries that are not stored yet; refuses changed ones.
pub async fn bootstrap(
    db: &Client,
    plans: &[PlanSpec],
    subscriptions: &[SubscriptionSpec],
    now_ms: i64,
) -> Result<Bootstrapped, CatalogStoreError> {
    let stored_plans: BTreeMap<(String, u32), String> = db
        .query("SELECT DISTINCT plan_id, version, body FROM catalog_plans")
        .fetch_all::<PlanRow>()
        .await?
        .into_iter()
        .map(|r| ((r.plan_id, r.version), r.body))
        .collect();
    let stored_subs: BTreeMap<(String, String), String> = db
        .query("SELECT DISTINCT customer, effective_from, body FROM catalog_subscriptions")
        .fetch_all::<SubscriptionRow>()
        .await?
        .into_iter()
        .map(|r| ((r.customer, r.effective_from), r.body))
        .collect();
    let mut new_plans = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        let b = body(p);
        match stored_plans.get(&(p.id.clone(), p.version)) {
            Some(stored) if *stored == b => {}
            Some(_) => {
                return Err(CatalogStoreError::Conflict {
                    setting: format!("plans[{i}]"),
                    detail: format!(
                        "plan {} version {} is already stored with different content; versions \
                         are immutable, a change must be a new version",
                        p.id, p.version
                    ),
                })
            }
            None => new_plans.push((p, b)),
        }
    }
    let mut new_subs = Vec::new();
    for (i, s) in subscriptions.iter().enumerate() {
        let b = body(s);
        let id = subscription_identity(s);
        match stored_subs.get(&id) {
            Some(stored) if *stored == b => {}
            Some(_) => {
                return Err(CatalogStoreError::Conflict {
                    setting: format!("subscriptions[{i}]"),
                    detail: format!(
                        "the subscription of {} from {:?} is already stored with different \
                         content; add one with a later effective_from instead",
                        id.0, id.1
                    ),
                })
            }
            None => new_subs.push((id, b)),
        }
    }
    let recorded_at = datetime_secs(now_ms);
    if !new_plans.is_empty() {
        let mut insert = db.insert::<PlanInsert<'_>>("catalog_plans").await?;
        for (p, b) in &new_plans {
            insert
                .write(&PlanInsert {
                    plan_id: &p.id,
                    version: p.version,
                    body: b,
                    recorded_at,
                })
                .await?;
        }
        insert.end().await?;
    }
    if !new_subs.is_empty() {
        let mut insert = db
            .insert::<SubscriptionInsert<'_>>("catalog_subscriptions")
            .await?;
        for ((customer, from), b) in &new_subs {
            insert
                .write(&SubscriptionInsert {
                    customer,
                    effective_from: from,
                    body: b,
                    recorded_at,
                })
                .await?;
        }
        insert.end().await?;
    }
    Ok(Bootstrapped {
        plans_appended: new_plans.len(),
        subscriptions_appended: new_subs.len(),
    })
}

/// Every stored plan version and subscription (identical re-appends read once), in a stable
/// order; validate them with [`crate::Catalog::new`] (which refuses two different bodies for
/// one identity, e.g. from two conflicting writers).
pub async fn load(
    db: &Client,
) -> Result<(Vec<PlanSpec>, Vec<SubscriptionSpec>), CatalogStoreError> {
    let plans = db
        .query("SELECT DISTINCT plan_id, version, body FROM catalog_plans ORDER BY plan_id, version, body")
        .fetch_all::<PlanRow>()
        .await?
        .into_iter()
        .map(|r| {
            serde_json::from_str::<PlanSpec>(&r.body).map_err(|e| CatalogStoreError::Unreadable {
                identity: format!("plan {} v{}", r.plan_id, r.version),
                detail: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let subs = db
        .query(
            "SELECT DISTINCT customer, effective_from, body FROM catalog_subscriptions \
             ORDER BY customer, effective_from, body",
        )
        .fetch_all::<SubscriptionRow>()
        .await?
        .into_iter()
        .map(|r| {
            serde_json::from_str::<SubscriptionSpec>(&r.body).map_err(|e| {
                CatalogStoreError::Unreadable {
                    identity: format!("subscription of {} from {:?}", r.customer, r.effective_from),
                    detail: e.to_string(),
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((plans, subs))
}

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
            meters: crate::store::registry::meters(db).await?,
            rates: crate::store::rates::load(db).await?,
        })
    }
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
            subscriptions.insert(0, sub.clone());
            self.build(plans, subscriptions, &kept)
                .map_err(|e| renamed(e, "subscriptions[0]", "subscription"))?;
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
