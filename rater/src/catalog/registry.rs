//! The registry: the stored versions of every customer, agent and meter, and the rules for
//! adding one. Pure; [`crate::store::registry`] reads and appends it in ClickHouse.
//!
//! Rules (the same for the three kinds): an identity is (customer, version), (customer,
//! agent, version) or (meter, version); adding an identity already stored with the same body
//! changes nothing, with a different body is a conflict (versions are immutable), and a new
//! version must be higher than the latest stored one. The current entry is the highest
//! version. A meter's new version keeps its aggregation.

use std::collections::BTreeMap;

use tally_domain::meter::Meter;
use tally_domain::{AgentId, CustomerId};

use crate::catalog::customers::{validate_agent, validate_customer, AgentSpec, CustomerSpec};
use crate::catalog::error::CatalogError;
use crate::catalog::meters::{check_successor, validate_meter, MeterEntry};

/// Whether an addition is new or was stored already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Novelty {
    New,
    Stored,
}

/// Every stored version of every customer, agent and meter.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    customers: BTreeMap<CustomerId, BTreeMap<u32, CustomerSpec>>,
    agents: BTreeMap<(CustomerId, AgentId), BTreeMap<u32, AgentSpec>>,
    meters: BTreeMap<String, BTreeMap<u32, (MeterEntry, Meter)>>,
}

fn conflict(setting: &str, detail: String) -> CatalogError {
    CatalogError::Conflict {
        setting: setting.to_owned(),
        detail,
    }
}

/// The novelty of `version` with `body` among `versions`; `what` names the entry in errors.
fn novelty<T>(
    versions: Option<&BTreeMap<u32, T>>,
    version: u32,
    same: impl Fn(&T) -> bool,
    what: &str,
    at: &str,
) -> Result<Novelty, CatalogError> {
    let Some(versions) = versions else {
        return Ok(Novelty::New);
    };
    if let Some(stored) = versions.get(&version) {
        if same(stored) {
            return Ok(Novelty::Stored);
        }
        return Err(conflict(
            at,
            format!(
                "{what} version {version} is already stored with different content; versions \
                 are immutable, a change must be a new version"
            ),
        ));
    }
    match versions.keys().next_back() {
        Some(latest) if *latest > version => Err(conflict(
            at,
            format!("{what} version {version} is below the latest stored version {latest}"),
        )),
        _ => Ok(Novelty::New),
    }
}

impl Registry {
    /// Checks a customer version and its agents (errors name `at`, e.g. `customers[0]`) and
    /// records them; the novelty of the customer and of each agent, in order.
    pub fn add_customer(
        &mut self,
        spec: &CustomerSpec,
        at: &str,
    ) -> Result<(Novelty, Vec<Novelty>), CatalogError> {
        let (customer, _) = validate_customer(spec, at)?;
        let alone = CustomerSpec {
            agents: vec![],
            ..spec.clone()
        };
        let n = novelty(
            self.customers.get(&customer.id),
            spec.version,
            |s| *s == alone,
            &format!("customer {}", customer.id),
            at,
        )?;
        let mut agents = Vec::with_capacity(spec.agents.len());
        for (j, a) in spec.agents.iter().enumerate() {
            agents.push(self.check_agent(&customer.id, a, &format!("{at}.agents[{j}]"))?);
        }
        self.customers
            .entry(customer.id.clone())
            .or_default()
            .insert(spec.version, alone);
        for a in &spec.agents {
            self.record_agent(&customer.id, a)?;
        }
        Ok((n, agents))
    }

    /// Checks and records an agent version of a stored customer (errors name `at`).
    pub fn add_agent(
        &mut self,
        customer: &CustomerId,
        spec: &AgentSpec,
        at: &str,
    ) -> Result<Novelty, CatalogError> {
        if !self.customers.contains_key(customer) {
            return Err(CatalogError::NotFound(format!("no customer {customer}")));
        }
        let n = self.check_agent(customer, spec, at)?;
        self.record_agent(customer, spec)?;
        Ok(n)
    }

    fn check_agent(
        &self,
        customer: &CustomerId,
        spec: &AgentSpec,
        at: &str,
    ) -> Result<Novelty, CatalogError> {
        let agent = validate_agent(customer, spec, at)?;
        novelty(
            self.agents.get(&(customer.clone(), agent.id.clone())),
            spec.version,
            |s| s == spec,
            &format!("agent {} of {customer}", agent.id),
            at,
        )
    }

    fn record_agent(
        &mut self,
        customer: &CustomerId,
        spec: &AgentSpec,
    ) -> Result<(), CatalogError> {
        let agent = validate_agent(customer, spec, "agent")?;
        self.agents
            .entry((customer.clone(), agent.id))
            .or_default()
            .insert(spec.version, spec.clone());
        Ok(())
    }

    /// Checks and records a meter version (errors name `at`, e.g. `meter`).
    pub fn add_meter(&mut self, entry: &MeterEntry, at: &str) -> Result<Novelty, CatalogError> {
        let meter = validate_meter(entry, at)?;
        let versions = self.meters.get(&entry.slug);
        let n = novelty(
            versions,
            entry.version,
            |(s, _)| s == entry,
            &format!("meter {}", entry.slug),
            at,
        )?;
        if let Some((latest, _)) = versions.and_then(|v| v.values().next_back()) {
            if n == Novelty::New {
                check_successor(latest, entry, at)?;
            }
        }
        self.meters
            .entry(entry.slug.clone())
            .or_default()
            .insert(entry.version, (entry.clone(), meter));
        Ok(n)
    }

    /// The latest version of every customer, by id.
    pub fn customers(&self) -> impl Iterator<Item = &CustomerSpec> {
        self.customers
            .values()
            .filter_map(|v| v.values().next_back())
    }

    /// Every version of one customer, oldest first (empty: unknown).
    pub fn customer_versions(&self, id: &CustomerId) -> Vec<&CustomerSpec> {
        self.customers
            .get(id)
            .map_or(vec![], |v| v.values().collect())
    }

    /// The latest version of every agent of `customer`, by agent id.
    pub fn agents_of(&self, customer: &CustomerId) -> Vec<&AgentSpec> {
        self.agents
            .range((customer.clone(), min_agent())..)
            .take_while(|((c, _), _)| c == customer)
            .filter_map(|(_, v)| v.values().next_back())
            .collect()
    }

    /// The latest version of every meter, by slug.
    pub fn meter_entries(&self) -> impl Iterator<Item = &MeterEntry> {
        self.meters
            .values()
            .filter_map(|v| v.values().next_back().map(|(e, _)| e))
    }

    /// Every version of one meter, oldest first (empty: unknown).
    pub fn meter_versions(&self, slug: &str) -> Vec<&MeterEntry> {
        self.meters
            .get(slug)
            .map_or(vec![], |v| v.values().map(|(e, _)| e).collect())
    }

    /// The latest version of every meter, validated: the meters the rater prices.
    pub fn meters(&self) -> Vec<Meter> {
        self.meters
            .values()
            .filter_map(|v| v.values().next_back().map(|(_, m)| m.clone()))
            .collect()
    }
}

/// The smallest agent id, to start a range over one customer's agents.
fn min_agent() -> AgentId {
    AgentId::new("0").unwrap_or_else(|_| unreachable!("\"0\" is a valid agent id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(json: &str) -> CustomerSpec {
        serde_json::from_str(json).expect("a customer")
    }

    fn meter(json: &str) -> MeterEntry {
        serde_json::from_str(json).expect("a meter")
    }

    #[test]
    fn versions_are_immutable_and_rise() {
        let mut r = Registry::default();
        let v1 = customer(r#"{"id":"acme","name":"Acme","agents":[{"id":"bot"}]}"#);
        assert_eq!(
            r.add_customer(&v1, "customer").expect("new"),
            (Novelty::New, vec![Novelty::New])
        );
        assert_eq!(
            r.add_customer(&v1, "customer").expect("stored"),
            (Novelty::Stored, vec![Novelty::Stored])
        );
        let renamed = customer(r#"{"id":"acme","name":"Acme Inc"}"#);
        let err = r.add_customer(&renamed, "customer").expect_err("changed");
        assert!(matches!(err, CatalogError::Conflict { .. }), "{err}");
        let v3 = customer(r#"{"id":"acme","version":3,"name":"Acme Inc"}"#);
        r.add_customer(&v3, "customer").expect("a new version");
        let v2 = customer(r#"{"id":"acme","version":2,"name":"Acme 2"}"#);
        let err = r
            .add_customer(&v2, "customer")
            .expect_err("below the latest");
        assert!(
            err.to_string()
                .contains("below the latest stored version 3"),
            "{err}"
        );
        let acme = CustomerId::new("acme").expect("id");
        assert_eq!(
            r.customers().map(|c| c.version).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(r.customer_versions(&acme).len(), 2);
        assert_eq!(r.agents_of(&acme)[0].id, "bot");
    }

    #[test]
    fn agents_need_a_stored_customer() {
        let mut r = Registry::default();
        let acme = CustomerId::new("acme").expect("id");
        let bot: AgentSpec = serde_json::from_str(r#"{"id":"bot"}"#).expect("agent");
        let err = r.add_agent(&acme, &bot, "agent").expect_err("unknown");
        assert!(matches!(err, CatalogError::NotFound(_)), "{err}");
        r.add_customer(&customer(r#"{"id":"acme","name":"A"}"#), "customer")
            .expect("new");
        assert_eq!(
            r.add_agent(&acme, &bot, "agent").expect("new"),
            Novelty::New
        );
        let other = CustomerId::new("acme2").expect("id");
        assert!(r.agents_of(&other).is_empty());
    }

    #[test]
    fn the_latest_meter_version_is_priced() {
        let mut r = Registry::default();
        let v1 = meter(r#"{"slug":"calls","event_type":"c","aggregation":"COUNT"}"#);
        r.add_meter(&v1, "meter").expect("new");
        let v2 = meter(
            r#"{"slug":"calls","version":2,"event_type":"c","aggregation":"COUNT","group_by":{"tool":"$.tool"}}"#,
        );
        r.add_meter(&v2, "meter").expect("a new version");
        assert_eq!(r.meters()[0].group_names(), vec!["tool"]);
        assert_eq!(r.meter_versions("calls").len(), 2);
        let sum = meter(
            r#"{"slug":"calls","version":3,"event_type":"c","aggregation":"SUM","value_property":"$.n"}"#,
        );
        let err = r.add_meter(&sum, "meter").expect_err("aggregation changed");
        assert!(err.to_string().contains("meter.aggregation"), "{err}");
    }
}
