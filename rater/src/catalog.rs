//! The catalog: validated plan versions and subscriptions, and the rules for which plan
//! version prices a customer's period. A period is priced entirely by the version of its
//! subscription's plan that is effective at the period's start (the latest `effective_from`
//! at or before it); a new version takes effect from the next period on.

use std::collections::HashMap;

use tally_domain::{BillingCycle, Currency, CustomerId, Meter, MeterSlug};
use tally_platform::ConfigError;

use crate::config::{PlanSpec, PriceSpec, RaterConfig, SubscriptionSpec};
use crate::pricing::{graduated, PriceModel};

/// One immutable plan version.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub version: u32,
    pub currency: Currency,
    pub effective_from_ms: i64,
    pub prices: HashMap<MeterSlug, PriceModel>,
}

/// A customer's subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub plan: String,
    pub cycle: BillingCycle,
}

/// Plans and subscriptions.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Versions per plan id, sorted by `effective_from_ms`.
    plans: HashMap<String, Vec<Plan>>,
    subscriptions: HashMap<CustomerId, Subscription>,
    default_plan: Option<String>,
}

impl Catalog {
    /// Validates the configuration against the declared meters.
    pub fn new(
        plans: Vec<PlanSpec>,
        subs: Vec<SubscriptionSpec>,
        rater: &RaterConfig,
        meters: &[Meter],
    ) -> Result<Catalog, ConfigError> {
        let mut by_id: HashMap<String, Vec<Plan>> = HashMap::new();
        for (i, spec) in plans.into_iter().enumerate() {
            let plan = validate_plan(spec, i, meters)?;
            let versions = by_id.entry(plan.id.clone()).or_default();
            if versions.iter().any(|p| p.version == plan.version) {
                return Err(ConfigError::invalid(
                    format!("plans[{i}].version"),
                    format!(
                        "plan {} version {} is declared twice",
                        plan.id, plan.version
                    ),
                ));
            }
            versions.push(plan);
        }
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
        let mut subscriptions = HashMap::new();
        for (i, s) in subs.into_iter().enumerate() {
            let setting = |f: &str| format!("subscriptions[{i}].{f}");
            let customer = CustomerId::new(s.customer)
                .map_err(|e| ConfigError::invalid(setting("customer"), e))?;
            if !by_id.contains_key(&s.plan) {
                return Err(ConfigError::invalid(
                    setting("plan"),
                    format!("no plan {:?}", s.plan),
                ));
            }
            let cycle = BillingCycle::Monthly {
                anchor_day: s.billing_anchor_day,
            };
            cycle
                .validate()
                .map_err(|e| ConfigError::invalid(setting("billing_anchor_day"), e))?;
            if subscriptions
                .insert(
                    customer.clone(),
                    Subscription {
                        plan: s.plan,
                        cycle,
                    },
                )
                .is_some()
            {
                return Err(ConfigError::invalid(
                    setting("customer"),
                    format!("{customer} has two subscriptions"),
                ));
            }
        }
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
        })
    }

    /// The customer's subscription, or the default plan on a calendar-month cycle.
    pub fn subscription(&self, customer: &CustomerId) -> Option<Subscription> {
        self.subscriptions.get(customer).cloned().or_else(|| {
            self.default_plan.clone().map(|plan| Subscription {
                plan,
                cycle: BillingCycle::default(),
            })
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

fn validate_plan(spec: PlanSpec, i: usize, meters: &[Meter]) -> Result<Plan, ConfigError> {
    let setting = |f: &str| format!("plans[{i}].{f}");
    if spec.id.is_empty() {
        return Err(ConfigError::invalid(setting("id"), "is empty"));
    }
    let currency: Currency = spec
        .currency
        .parse()
        .map_err(|e| ConfigError::invalid(setting("currency"), e))?;
    let mut prices = HashMap::new();
    for (j, p) in spec.prices.into_iter().enumerate() {
        let setting = |f: &str| format!("plans[{i}].prices[{j}].{f}");
        let (meter, model) = match p {
            PriceSpec::PerUnit { meter, unit_price } => {
                if unit_price.is_sign_negative() && !unit_price.is_zero() {
                    return Err(ConfigError::invalid(setting("unit_price"), "is negative"));
                }
                (meter, PriceModel::PerUnit { unit_price })
            }
            PriceSpec::Graduated { meter, tiers } => {
                graduated::validate(&tiers)
                    .map_err(|e| ConfigError::invalid(setting("tiers"), e))?;
                (meter, PriceModel::Graduated { tiers })
            }
        };
        let Some(m) = meters.iter().find(|m| m.slug.as_str() == meter) else {
            return Err(ConfigError::invalid(
                setting("meter"),
                format!("no meter {meter:?} is declared"),
            ));
        };
        if prices.insert(m.slug.clone(), model).is_some() {
            return Err(ConfigError::invalid(
                setting("meter"),
                format!("meter {meter} is priced twice"),
            ));
        }
    }
    Ok(Plan {
        id: spec.id,
        version: spec.version,
        currency,
        effective_from_ms: spec.effective_from.timestamp_millis(),
        prices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_domain::meter::{validate_meters, MeterSpec};

    fn meters() -> Vec<Meter> {
        let specs: Vec<MeterSpec> =
            serde_json::from_str(r#"[{"slug":"calls","event_type":"c","aggregation":"COUNT"}]"#)
                .unwrap();
        validate_meters(specs).unwrap()
    }

    fn plans(toml_text: &str) -> Vec<PlanSpec> {
        #[derive(serde::Deserialize)]
        struct F {
            plans: Vec<PlanSpec>,
        }
        toml::from_str::<F>(toml_text).unwrap().plans
    }

    const TWO_VERSIONS: &str = r#"
        [[plans]]
        id = "p"
        version = 1
        currency = "USD"
        effective_from = "2026-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "calls", unit_price = "0.10" }]
        [[plans]]
        id = "p"
        version = 2
        currency = "USD"
        effective_from = "2026-06-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "calls", unit_price = "0.20" }]
    "#;

    #[test]
    fn version_effective_at_period_start_applies() {
        let rater = RaterConfig {
            default_plan: Some("p".into()),
            ..Default::default()
        };
        let c = Catalog::new(plans(TWO_VERSIONS), vec![], &rater, &meters()).unwrap();
        let may = chrono::DateTime::parse_from_rfc3339("2026-05-01T00:00:00Z")
            .unwrap()
            .timestamp_millis();
        let june = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(c.plan_at("p", may).unwrap().version, 1);
        assert_eq!(c.plan_at("p", june).unwrap().version, 2);
        assert!(c.plan_at("p", 0).is_none());
        assert_eq!(
            c.subscription(&CustomerId::new("x").unwrap()).unwrap().plan,
            "p"
        );
    }

    #[test]
    fn bad_catalogs_name_the_setting() {
        let rater = RaterConfig::default();
        let bad_meter = TWO_VERSIONS.replacen("meter = \"calls\"", "meter = \"nope\"", 1);
        let err = Catalog::new(plans(&bad_meter), vec![], &rater, &meters())
            .unwrap_err()
            .to_string();
        assert!(err.contains("plans[0].prices[0].meter"), "{err}");
        let bad_cur = TWO_VERSIONS.replacen("USD", "XYZ", 1);
        let err = Catalog::new(plans(&bad_cur), vec![], &rater, &meters())
            .unwrap_err()
            .to_string();
        assert!(err.contains("plans[0].currency"), "{err}");
        let sub = SubscriptionSpec {
            customer: "acme".into(),
            plan: "missing".into(),
            billing_anchor_day: 1,
        };
        let err = Catalog::new(plans(TWO_VERSIONS), vec![sub], &rater, &meters())
            .unwrap_err()
            .to_string();
        assert!(err.contains("subscriptions[0].plan"), "{err}");
    }
}
