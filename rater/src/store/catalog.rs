//! The catalog's plan versions and subscriptions in ClickHouse, append-only
//! (`catalog_plans`, `catalog_subscriptions`, migration 0008). The configuration file
//! bootstraps them: each plan version and subscription of the file is appended unless the
//! same identity is already stored with the same body; a stored identity with a different
//! body is refused (versions are immutable; a change is a new version). It reads and appends
//! rows only: the catalog is built from them, with the stored meters and rates, by
//! [`crate::store::source`]. It never updates or deletes a stored row and never calls the
//! other stores. Two writers racing may both append a body for one identity: the one
//! recorded first is in force, the other set aside and reported
//! ([`crate::catalog::conflicts`], issue 17).

use std::collections::BTreeMap;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_platform::store::datetime_secs;

use crate::catalog::conflicts::{
    first_recorded, Conflict, ConflictKind, Decided, Outcome, Recorded,
};
use crate::config::{PlanSpec, SubscriptionSpec};
use crate::store::error::CatalogStoreError;

#[derive(clickhouse::Row, Serialize)]
struct PlanInsert<'a> {
    plan_id: &'a str,
    version: u32,
    body: &'a str,
    recorded_at: u32,
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
    // what is in force: the body of each identity recorded first (a race may have left two)
    let (plans_in_force, _) = recorded(db, PLANS_SQL).await?;
    let stored_plans: BTreeMap<(String, u32), String> = plans_in_force
        .into_iter()
        .filter_map(|r| Some(((r.identity.0, r.identity.1.parse().ok()?), r.body)))
        .collect();
    let (subs_in_force, _) = recorded(db, SUBSCRIPTIONS_SQL).await?;
    let stored_subs: BTreeMap<(String, String), String> = subs_in_force
        .into_iter()
        .map(|r| (r.identity, r.body))
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

/// Each stored plan body with the first time it was recorded.
const PLANS_SQL: &str = "SELECT plan_id AS a, toString(version) AS b, body, \
    toUInt32(min(recorded_at)) AS first_at FROM catalog_plans GROUP BY plan_id, version, body";

/// Each stored subscription body with the first time it was recorded.
const SUBSCRIPTIONS_SQL: &str = "SELECT customer AS a, effective_from AS b, body, \
    toUInt32(min(recorded_at)) AS first_at FROM catalog_subscriptions \
    GROUP BY customer, effective_from, body";

/// A stored row with the first time its body was recorded.
#[derive(clickhouse::Row, Deserialize)]
struct RecordedRow {
    a: String,
    b: String,
    body: String,
    first_at: u32,
}

/// The stored plan versions and subscription records as the stored catalog is built from
/// them ([`crate::catalog::conflicts`], rule 1 applied): one body per identity, the one
/// recorded first.
#[derive(Debug, Clone, Default)]
pub struct StoredRecords {
    /// In recorded order (first recorded, then version, then body).
    pub plans: Vec<PlanSpec>,
    /// By customer and `effective_from`.
    pub subscriptions: Vec<SubscriptionSpec>,
    /// The bodies set aside, and (quarantined) the customers with a record that no longer
    /// parses and, of kind `Plan`, the plans with a version that no longer parses.
    pub conflicts: Vec<Conflict>,
}

/// Every row of `sql` (columns `a`, `b`, `body`, `first_at`) decided by rule 1.
async fn recorded(db: &Client, sql: &str) -> Result<Decided<(String, String)>, CatalogStoreError> {
    let rows = db
        .query(sql)
        .fetch_all::<RecordedRow>()
        .await?
        .into_iter()
        .map(|r| Recorded {
            identity: (r.a, r.b),
            recorded_at: r.first_at,
            body: r.body,
        })
        .collect();
    Ok(first_recorded(rows))
}

fn set_aside(kind: ConflictKind, identity: String, winner_at: u32, at: u32) -> Conflict {
    let when = |s: u32| tally_domain::period::rfc3339(i64::from(s) * 1000);
    Conflict {
        kind,
        outcome: Outcome::SetAside,
        identity,
        detail: format!(
            "another body of this identity was recorded first ({}; this one {}): versions are \
             immutable, the first recorded is in force and this one is ignored",
            when(winner_at),
            when(at)
        ),
    }
}

/// A stored plan version whose body does not read: set aside (reported as `identity`), and
/// its plan (`plan_id`) named as quarantined, so that its subscribers are left out rather
/// than priced on another version ([`crate::Catalog::from_stored`]).
fn unreadable_plan(identity: String, plan_id: &str, why: String) -> [Conflict; 2] {
    [
        Conflict {
            kind: ConflictKind::Plan,
            outcome: Outcome::SetAside,
            identity: identity.clone(),
            detail: format!("{why}; the plan's subscribers are quarantined"),
        },
        Conflict {
            kind: ConflictKind::Plan,
            outcome: Outcome::Quarantined,
            identity: plan_id.to_owned(),
            detail: format!("{identity}: {why}"),
        },
    ]
}

/// Every stored plan version and subscription record, one body per identity (the one
/// recorded first: [`crate::catalog::conflicts`]), with what was set aside; a plan body that
/// no longer parses is set aside and quarantines its plan's subscribers, a subscription body
/// that no longer parses quarantines its customer. Build the catalog with
/// [`crate::Catalog::from_stored`].
pub async fn load_records(db: &Client) -> Result<StoredRecords, CatalogStoreError> {
    let mut out = StoredRecords::default();
    let (plans, losers) = recorded(db, PLANS_SQL).await?;
    let plan_identity = |(id, v): &(String, String)| format!("plan {id} v{v}");
    for (r, winner_at) in losers {
        out.conflicts.push(set_aside(
            ConflictKind::Plan,
            plan_identity(&r.identity),
            winner_at,
            r.recorded_at,
        ));
    }
    let mut parsed = Vec::with_capacity(plans.len());
    for r in plans {
        let why = match serde_json::from_str::<PlanSpec>(&r.body) {
            Ok(p) if p.id == r.identity.0 && p.version.to_string() == r.identity.1 => {
                parsed.push((r.recorded_at, p, r.body));
                continue;
            }
            Ok(_) => "the body names another identity".to_owned(),
            Err(e) => format!("the body does not parse: {e}"),
        };
        out.conflicts.extend(unreadable_plan(
            plan_identity(&r.identity),
            &r.identity.0,
            why,
        ));
    }
    parsed.sort_by(|a, b| (a.0, a.1.version, &a.2).cmp(&(b.0, b.1.version, &b.2)));
    out.plans = parsed.into_iter().map(|(_, p, _)| p).collect();
    let (subs, losers) = recorded(db, SUBSCRIPTIONS_SQL).await?;
    let sub_identity = |(c, from): &(String, String)| format!("subscription of {c} from {from:?}");
    for (r, winner_at) in losers {
        out.conflicts.push(set_aside(
            ConflictKind::Subscription,
            sub_identity(&r.identity),
            winner_at,
            r.recorded_at,
        ));
    }
    for r in subs {
        match serde_json::from_str::<SubscriptionSpec>(&r.body) {
            Ok(s) if subscription_identity(&s) == r.identity => out.subscriptions.push(s),
            parsed => out.conflicts.push(Conflict {
                kind: ConflictKind::Subscription,
                outcome: Outcome::Quarantined,
                identity: r.identity.0.clone(),
                detail: format!(
                    "stored {}: {}",
                    sub_identity(&r.identity),
                    match parsed {
                        Ok(_) => "the body names another identity".to_owned(),
                        Err(e) => format!("the body does not parse: {e}"),
                    }
                ),
            }),
        }
    }
    Ok(out)
}
