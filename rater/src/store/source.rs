//! The one loader of the stored catalog: the catalog as stored now, built from the stored
//! meters ([`crate::store::registry`]), tax and FX rates ([`crate::store::rates`]) and plan
//! versions and subscriptions ([`crate::store::catalog`]), read in that order; and every
//! change that must be checked against all of them before it is appended (a plan version, a
//! subscription, a cancellation, a meter version).
//!
//! It owns the order in which the stores are read and the one-change-at-a-time rule; the
//! rules themselves are [`crate::catalog`]'s. The stores it calls never call it or each other.
//!
//! The stored catalog never fails as a whole because of conflicting records (two API
//! instances racing, issue 17): [`CatalogSource::current`] keeps what was recorded first, sets
//! aside what does not fit and quarantines a customer whose records do not build
//! ([`crate::catalog::conflicts`]). A change is checked against what is in force (set-aside
//! records and quarantined customers excluded, except the changed customer's own records); a
//! record of a quarantined customer must make its records build again
//! ([`CatalogStoreError::Quarantined`] otherwise). After appending it is read back and judged
//! by the catalog then built: a change whose identity has another writer's body in force, a
//! plan version not in it, or a record leaving its customer quarantined is answered as a
//! conflict; the winner and its re-posts are accepted.

use clickhouse::Client;
use tally_domain::Meter;
use tally_platform::ConfigError;

use crate::catalog::conflicts::{Conflict, ConflictKind};
use crate::catalog::meters::MeterEntry;
use crate::catalog::rates::Rates;
use crate::catalog::registry::Novelty;
use crate::catalog::Catalog;
use crate::config::{PlanSpec, RaterConfig, SubscriptionSpec};
use crate::store::catalog::{
    body, bootstrap, load_records, subscription_identity, Bootstrapped, StoredRecords,
};
use crate::store::error::CatalogStoreError;
use crate::store::registry::Appended;
use crate::store::{rates, registry};

/// Catalog changes made by this process, one at a time (load, check against everything
/// stored, append): two requests that each pass the checks alone but not together (two lines
/// pricing one meter, two records of one line at one instant) are decided in turn, so the
/// second is refused instead of both being stored and every later catalog build failing.
/// Between two API instances the window remains: the stored catalog then decides
/// ([`crate::catalog::conflicts`]) and the change read back after appending tells the loser.
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
    /// The stored meter versions and rates set aside while reading them.
    pub conflicts: Vec<Conflict>,
}

impl Stored {
    /// The meters and rates as stored now.
    pub async fn load(db: &Client) -> Result<Stored, CatalogStoreError> {
        let (meters, mut conflicts) = registry::meters_reported(db).await?;
        let (rates, more) = rates::load_reported(db).await?;
        conflicts.extend(more);
        Ok(Stored {
            meters,
            rates,
            conflicts,
        })
    }
}

/// The plan versions and subscription records in force in `current` (set-aside versions and
/// quarantined customers' records left out, except `own` customer's records), to check a
/// change against with the strict rules.
fn in_force(
    current: &Catalog,
    records: StoredRecords,
    own: Option<&str>,
) -> (Vec<PlanSpec>, Vec<SubscriptionSpec>) {
    let plans = records
        .plans
        .into_iter()
        .filter(|p| current.plan_version(&p.id, Some(p.version), 0).is_some())
        .collect();
    let subs = records
        .subscriptions
        .into_iter()
        .filter(|s| {
            current.quarantine_of(&s.customer).is_none() || Some(s.customer.as_str()) == own
        })
        .collect();
    (plans, subs)
}

/// Why a change of `customer`, quarantined for `why`, is refused.
fn quarantined(customer: &str, why: &str) -> String {
    format!(
        "{customer}'s stored subscription records conflict, so it is left out of rating until \
         they are resolved (docs/OPERATIONS.md, \"Conflicting catalog records\"): {why}"
    )
}

/// A change that lost a race with another writer (read back after appending).
fn lost(setting: &str, detail: String) -> CatalogStoreError {
    CatalogStoreError::Conflict {
        setting: setting.into(),
        detail,
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
    /// The catalog as stored now; conflicting records are decided, never a failure of the
    /// whole catalog ([`crate::catalog::conflicts`]; [`Catalog::conflicts`] lists them).
    pub async fn current(&self, db: &Client) -> Result<Catalog, CatalogStoreError> {
        let stored = Stored::load(db).await?;
        let records = load_records(db).await?;
        self.build_records(records, &stored)
    }

    /// The stored catalog of these records ([`Catalog::from_stored`]), validated against the
    /// stored meters and priced with the stored rates.
    pub fn build_records(
        &self,
        records: StoredRecords,
        stored: &Stored,
    ) -> Result<Catalog, CatalogStoreError> {
        let mut found = stored.conflicts.clone();
        found.extend(records.conflicts);
        let catalog = Catalog::from_stored(
            records.plans,
            records.subscriptions,
            &self.rater,
            &stored.meters,
            (stored.rates.tax_table(), stored.rates.fx_table()),
            found,
        )?;
        Ok(if self.features.tax {
            catalog
        } else {
            catalog.without_tax()
        })
    }

    /// The catalog of these entries, refused as a whole if any does not fit (a change is
    /// checked with it against what is in force).
    fn build_strict(
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

    /// Refuses a record of a customer quarantined in `current` unless the stored records with
    /// `sub` added build for it (the record resolves the conflict).
    fn refuse_unless_resolved(
        &self,
        current: &Catalog,
        records: &StoredRecords,
        stored: &Stored,
        sub: &SubscriptionSpec,
    ) -> Result<(), CatalogStoreError> {
        let Some(why) = current.quarantine_of(&sub.customer) else {
            return Ok(());
        };
        let mut with = records.clone();
        with.subscriptions.push(sub.clone());
        let after = self.build_records(with, stored)?;
        match after.quarantine_of(&sub.customer) {
            None => Ok(()),
            Some(still) if still == why => Err(CatalogStoreError::Quarantined(format!(
                "{}; this record does not resolve it",
                quarantined(&sub.customer, why)
            ))),
            Some(still) => Err(CatalogStoreError::Quarantined(format!(
                "{}; with this record it would still be: {still}",
                quarantined(&sub.customer, why)
            ))),
        }
    }

    /// Reads back a subscription record just appended: refused as a conflict when another
    /// writer stored a different record of its identity first, or when its customer's records
    /// no longer build together (quarantined).
    async fn read_back_subscription(
        &self,
        db: &Client,
        sub: &SubscriptionSpec,
    ) -> Result<(), CatalogStoreError> {
        let stored = Stored::load(db).await?;
        let records = load_records(db).await?;
        let id = subscription_identity(sub);
        if records
            .subscriptions
            .iter()
            .any(|s| subscription_identity(s) == id && body(s) != body(sub))
        {
            return Err(lost(
                "subscription",
                format!(
                    "another writer stored a different subscription of {} from {:?} first; \
                     that one is in force and this one is ignored (docs/PRICING.md, \
                     \"Conflicting stored records\")",
                    id.0, id.1
                ),
            ));
        }
        let after = self.build_records(records, &stored)?;
        if let Some(why) = after.quarantine_of(&sub.customer) {
            return Err(CatalogStoreError::Quarantined(format!(
                "the record is stored, but {}'s records do not build together with one stored \
                 at the same time by another writer ({why}); the customer is left out of rating \
                 until an operator resolves it (docs/OPERATIONS.md, \"Conflicting catalog \
                 records\")",
                sub.customer
            )));
        }
        Ok(())
    }

    /// Reads back a plan version just appended: refused as a conflict when the body in force
    /// for its identity is another writer's (recorded first), or when the built catalog has no
    /// such version (it was set aside: it does not fit a version of its plan recorded before
    /// it). Decided from what is in force, never from the set-aside report, which may name
    /// another body of the same identity (the winner and its re-posts are accepted).
    async fn read_back_plan(&self, db: &Client, plan: &PlanSpec) -> Result<(), CatalogStoreError> {
        let stored = Stored::load(db).await?;
        let records = load_records(db).await?;
        if records
            .plans
            .iter()
            .any(|p| p.id == plan.id && p.version == plan.version && body(p) != body(plan))
        {
            return Err(lost(
                "plan",
                format!(
                    "another writer stored a different plan {} version {} first; that one is in \
                     force and this one is ignored (docs/PRICING.md, \"Conflicting stored \
                     records\")",
                    plan.id, plan.version
                ),
            ));
        }
        let after = self.build_records(records, &stored)?;
        if after
            .plan_version(&plan.id, Some(plan.version), 0)
            .is_none()
        {
            let identity = format!("plan {} v{}", plan.id, plan.version);
            let why: Vec<&str> = after
                .conflicts()
                .iter()
                .filter(|c| c.kind == ConflictKind::Plan && c.identity == identity)
                .map(|c| c.detail.as_str())
                .collect();
            let why = why.join("; ");
            return Err(lost(
                "plan",
                format!(
                    "plan {} version {} is stored but set aside: {why} (docs/PRICING.md, \
                     \"Conflicting stored records\")",
                    plan.id, plan.version
                ),
            ));
        }
        Ok(())
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
        let records = load_records(db).await?;
        let id = subscription_identity(&sub);
        let stored = records
            .subscriptions
            .iter()
            .find(|s| subscription_identity(s) == id)
            .cloned();
        if stored.as_ref().is_some_and(|s| body(s) != body(&sub)) {
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
            let current = self.build_records(records.clone(), &kept)?;
            self.refuse_unless_resolved(&current, &records, &kept, &sub)?;
            let (plans, mut subscriptions) = in_force(&current, records, Some(&sub.customer));
            refuse_before_later_records(&subscriptions, &sub)?;
            subscriptions.insert(0, sub.clone());
            let after = self
                .build_strict(plans, subscriptions, &kept)
                .map_err(|e| renamed(e, "subscriptions[0]", "subscription"))?;
            refuse_backdated(&current, &after, &sub, now_ms)?;
        }
        let appended = bootstrap(db, &[], std::slice::from_ref(&sub), now_ms).await?;
        self.read_back_subscription(db, &sub).await?;
        Ok(appended)
    }

    /// Cancels a customer's subscription at `at_ms` or at the end of the period containing
    /// it: appends a `cancelled` record (append-only, like any subscription record) and
    /// returns it. Refused as [`CatalogStoreError::NotFound`] when nothing is in force then,
    /// as [`CatalogStoreError::Quarantined`] when the customer is quarantined.
    pub async fn cancel_subscription(
        &self,
        db: &Client,
        customer: &tally_domain::CustomerId,
        line: &str,
        at_ms: i64,
        at_period_end: bool,
        now_ms: i64,
    ) -> Result<(SubscriptionSpec, Bootstrapped), CatalogStoreError> {
        let current = self.current(db).await?;
        if let Some(why) = current.quarantine_of(customer.as_ref()) {
            return Err(CatalogStoreError::Quarantined(quarantined(
                customer.as_ref(),
                why,
            )));
        }
        let record = current
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
        let records = load_records(db).await?;
        let stored = records
            .plans
            .iter()
            .find(|p| p.id == plan.id && p.version == plan.version)
            .cloned();
        if stored.as_ref().is_some_and(|p| body(p) != body(&plan)) {
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
            let current = self.build_records(records.clone(), &kept)?;
            let (mut plans, subscriptions) = in_force(&current, records, None);
            plans.insert(0, plan.clone());
            self.build_strict(plans, subscriptions, &kept)
                .map_err(|e| renamed(e, "plans[0]", "plan"))?;
        }
        let appended = bootstrap(db, std::slice::from_ref(&plan), &[], now_ms).await?;
        self.read_back_plan(db, &plan).await?;
        Ok(appended)
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
        let kept = Stored::load(db).await?;
        let records = load_records(db).await?;
        let current = self.build_records(records.clone(), &kept)?;
        let (plans, subscriptions) = in_force(&current, records, None);
        let stored = Stored {
            meters: r.meters(),
            rates: kept.rates,
            conflicts: Vec::new(),
        };
        self.build_strict(plans, subscriptions, &stored)
            .map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::conflicts::Outcome;

    /// Issue 17: a change of a quarantined customer is accepted only when the stored records
    /// with it added build for that customer (here: a customer on the default plan, whose
    /// only version no longer reads, given a record on another plan).
    #[test]
    fn a_change_of_a_quarantined_customer_must_resolve_it() {
        let meters: Vec<tally_domain::meter::MeterSpec> =
            serde_json::from_str(r#"[{"slug":"calls","event_type":"c","aggregation":"COUNT"}]"#)
                .expect("meters");
        let plans = serde_json::from_str(
            r#"[{"id":"p","version":1,"currency":"USD","effective_from":"2026-01-01T00:00:00Z",
                 "prices":[{"model":"per_unit","meter":"calls","unit_price":"0.10"}]}]"#,
        )
        .expect("plans");
        let records = StoredRecords {
            plans,
            subscriptions: vec![],
            conflicts: vec![Conflict {
                kind: ConflictKind::Plan,
                outcome: Outcome::Quarantined,
                identity: "d".into(),
                detail: "plan d v1: the body does not parse".into(),
            }],
        };
        let stored = Stored {
            meters: tally_domain::meter::validate_meters(meters).expect("valid"),
            ..Default::default()
        };
        let source = CatalogSource {
            rater: RaterConfig {
                default_plan: Some("d".into()),
                ..Default::default()
            },
            features: tally_platform::Features::default(),
        };
        let current = source
            .build_records(records.clone(), &stored)
            .expect("builds");
        assert!(current.quarantine_of("walk-in").is_some());
        let record = |plan: &str| -> SubscriptionSpec {
            serde_json::from_value(serde_json::json!({"customer": "walk-in", "plan": plan}))
                .expect("a record")
        };
        source
            .refuse_unless_resolved(&current, &records, &stored, &record("p"))
            .expect("on p it is rated again");
        match source.refuse_unless_resolved(&current, &records, &stored, &record("d")) {
            Err(CatalogStoreError::Quarantined(why)) => assert!(why.contains("plan d v1"), "{why}"),
            other => panic!("still on the broken plan: {other:?}"),
        }
    }
}
