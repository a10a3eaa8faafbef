//! The catalog's plan versions and subscriptions in ClickHouse, append-only
//! (`catalog_plans`, `catalog_subscriptions`, migration 0008). The configuration file
//! bootstraps them: each plan version and subscription of the file is appended unless the
//! same identity is already stored with the same body; a stored identity with a different
//! body is refused (versions are immutable; a change is a new version). It reads and appends
//! rows only: the catalog is built from them, with the stored meters and rates, by
//! [`crate::store::source`]. It never updates or deletes a stored row and never calls the
//! other stores.

use std::collections::BTreeMap;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_platform::store::datetime_secs;

use crate::config::{PlanSpec, SubscriptionSpec};
use crate::store::error::CatalogStoreError;

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

pub(crate) fn body<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A record's identity: customer and `effective_from` (RFC 3339, milliseconds), the
/// latter followed by `#<line>` for a record of a named line.
pub(crate) fn subscription_identity(s: &SubscriptionSpec) -> (String, String) {
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
    let new_plans = unstored_plans(plans, &stored_plans)?;
    let new_subs = unstored_subscriptions(subscriptions, &stored_subs)?;
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

/// The file's plan versions not stored yet, with their bodies (pure); a version stored
/// with another body is refused.
fn unstored_plans<'p>(
    plans: &'p [PlanSpec],
    stored: &BTreeMap<(String, u32), String>,
) -> Result<Vec<(&'p PlanSpec, String)>, CatalogStoreError> {
    let mut new_plans = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        let b = body(p);
        match stored.get(&(p.id.clone(), p.version)) {
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
    Ok(new_plans)
}

/// A subscription record's identity: customer and `effective_from` ([`subscription_identity`]).
type SubscriptionIdentity = (String, String);

/// The file's subscription records not stored yet, by identity with their bodies (pure);
/// an identity stored with another body is refused.
fn unstored_subscriptions(
    subscriptions: &[SubscriptionSpec],
    stored: &BTreeMap<(String, String), String>,
) -> Result<Vec<(SubscriptionIdentity, String)>, CatalogStoreError> {
    let mut new_subs = Vec::new();
    for (i, s) in subscriptions.iter().enumerate() {
        let b = body(s);
        let id = subscription_identity(s);
        match stored.get(&id) {
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
    Ok(new_subs)
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
