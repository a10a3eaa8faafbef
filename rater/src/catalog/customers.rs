//! Customers and their agents in the catalog: the `[[customers]]` entries of the file (and the
//! bodies of `POST /v1/customers` and `POST /v1/customers/{id}/agents`), validated with every
//! error naming the field (`customers[0].agents[1].id`, `customer.name`). Pure.
//!
//! Each customer and each agent is a sequence of immutable versions (1, 2, ...); the current
//! one is the highest. A customer's name is for people (the API, invoices); billing terms
//! (plan, currency, tax region and exemption) stay on its subscriptions, which are dated.
//! Usage is not refused for customers or agents missing here: the catalog describes them,
//! the gateway's API keys and NATS permissions decide who may send.

use serde::{Deserialize, Serialize};
use tally_domain::{AgentId, CustomerId};
use tally_platform::ConfigError;

/// The longest display name, in bytes.
pub const NAME_BYTES_MAX: usize = 256;

/// `[[customers]]`: one version of a customer, with its agents.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerSpec {
    /// The customer id of its events (`[A-Za-z0-9_-]{1,64}`).
    pub id: String,
    /// 1, 2, ...: a change is a new, higher version. Default 1.
    #[serde(default = "first_version")]
    pub version: u32,
    /// Display name.
    pub name: String,
    /// Where invoices are emailed when finalized (`tally-payments`' invoice delivery): one
    /// address `local@domain` ([`check_billing_email`]). Default none: no invoice email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_email: Option<String>,
    /// The customer's agents; each is stored as its own versioned entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentSpec>,
}

/// `[[customers.agents]]`: one version of an agent of a customer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The agent id of its events (`[A-Za-z0-9_-]{1,64}`).
    pub id: String,
    /// 1, 2, ...: a change is a new, higher version. Default 1.
    #[serde(default = "first_version")]
    pub version: u32,
    /// Display name; default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub(crate) const fn first_version() -> u32 {
    1
}

/// A validated customer version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: CustomerId,
    pub version: u32,
    pub name: String,
}

/// A validated agent version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub customer: CustomerId,
    pub id: AgentId,
    pub version: u32,
    pub name: Option<String>,
}

impl CustomerSpec {
    /// The stored body of this version: the entry without its agents (stored apart).
    pub fn body(&self) -> String {
        let alone = CustomerSpec {
            agents: vec![],
            ..self.clone()
        };
        serde_json::to_string(&alone).unwrap_or_default()
    }
}

impl AgentSpec {
    /// The stored body of this version.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Validates a customer and its agents; `at` names the entry (`customers[0]`, `customer`).
pub fn validate_customer(
    spec: &CustomerSpec,
    at: &str,
) -> Result<(Customer, Vec<Agent>), ConfigError> {
    let id = CustomerId::new(spec.id.clone())
        .map_err(|e| ConfigError::invalid(format!("{at}.id"), e))?;
    check_version(spec.version, &format!("{at}.version"))?;
    check_name(&spec.name, &format!("{at}.name"))?;
    if let Some(email) = &spec.billing_email {
        check_billing_email(email)
            .map_err(|e| ConfigError::invalid(format!("{at}.billing_email"), e))?;
    }
    let mut agents: Vec<Agent> = Vec::with_capacity(spec.agents.len());
    for (j, a) in spec.agents.iter().enumerate() {
        let agent = validate_agent(&id, a, &format!("{at}.agents[{j}]"))?;
        if agents
            .iter()
            .any(|o| o.id == agent.id && o.version == agent.version)
        {
            return Err(ConfigError::invalid(
                format!("{at}.agents[{j}].id"),
                format!(
                    "agent {} version {} is declared twice",
                    agent.id, agent.version
                ),
            ));
        }
        agents.push(agent);
    }
    let customer = Customer {
        id,
        version: spec.version,
        name: spec.name.clone(),
    };
    Ok((customer, agents))
}

/// Validates one agent of `customer`; `at` names the entry (`agent`, `customers[0].agents[1]`).
pub fn validate_agent(
    customer: &CustomerId,
    spec: &AgentSpec,
    at: &str,
) -> Result<Agent, ConfigError> {
    let id =
        AgentId::new(spec.id.clone()).map_err(|e| ConfigError::invalid(format!("{at}.id"), e))?;
    check_version(spec.version, &format!("{at}.version"))?;
    if let Some(name) = &spec.name {
        check_name(name, &format!("{at}.name"))?;
    }
    Ok(Agent {
        customer: customer.clone(),
        id,
        version: spec.version,
        name: spec.name.clone(),
    })
}

pub(crate) fn check_version(version: u32, setting: &str) -> Result<(), ConfigError> {
    if version == 0 {
        return Err(ConfigError::invalid(setting, "versions start at 1"));
    }
    Ok(())
}

fn check_name(name: &str, setting: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() {
        return Err(ConfigError::invalid(setting, "is empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(ConfigError::invalid(
            setting,
            format!(
                "is {} bytes long, at most {NAME_BYTES_MAX} allowed",
                name.len()
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            setting,
            "contains a control character",
        ));
    }
    Ok(())
}

/// The longest billing address, in bytes (RFC 5321's path limit less the brackets).
pub const EMAIL_BYTES_MAX: usize = 254;

/// Checks a billing address: one plain `local@domain` in ASCII (no display name, no comment,
/// nothing an email header could be split on), the local part dot-separated atoms of RFC
/// 5322's `atext` (at most 64 bytes), the domain at least two dot-separated labels of
/// letters, digits and inner hyphens (at most 63 bytes each). Addresses an SMTP server needs
/// SMTPUTF8 for are refused.
pub fn check_billing_email(email: &str) -> Result<(), String> {
    if email.len() > EMAIL_BYTES_MAX {
        return Err(format!(
            "is {} bytes long, at most {EMAIL_BYTES_MAX} allowed",
            email.len()
        ));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(format!("{email:?} is not an address local@domain"));
    };
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext));
    if !local_ok {
        return Err(format!(
            "{email:?}: the part before @ is not a plain local part"
        ));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(format!(
            "{email:?}: the domain is not a host name like example.com"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> CustomerSpec {
        serde_json::from_str(json).expect("a customer")
    }

    #[test]
    fn a_customer_defaults_to_version_1_and_its_body_leaves_out_the_agents() {
        let s = spec(r#"{"id":"acme","name":"Acme","agents":[{"id":"bot-1"}]}"#);
        let (c, agents) = validate_customer(&s, "customers[0]").expect("valid");
        assert_eq!((c.version, agents.len()), (1, 1));
        assert_eq!(agents[0].version, 1);
        assert_eq!(s.body(), r#"{"id":"acme","version":1,"name":"Acme"}"#);
    }

    #[test]
    fn bad_customers_and_agents_are_refused_naming_the_field() {
        for (json, field) in [
            (r#"{"id":"ac me","name":"A"}"#, "customers[0].id"),
            (r#"{"id":"acme","name":" "}"#, "customers[0].name"),
            (
                r#"{"id":"acme","version":0,"name":"A"}"#,
                "customers[0].version",
            ),
            (
                r#"{"id":"acme","name":"A","agents":[{"id":"bot.1"}]}"#,
                "customers[0].agents[0].id",
            ),
            (
                r#"{"id":"acme","name":"A","agents":[{"id":"b","name":"x\ny"}]}"#,
                "customers[0].agents[0].name",
            ),
            (
                r#"{"id":"acme","name":"A","agents":[{"id":"b"},{"id":"b"}]}"#,
                "customers[0].agents[1].id",
            ),
        ] {
            let err = validate_customer(&spec(json), "customers[0]")
                .expect_err(json)
                .to_string();
            assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        }
        let unknown = serde_json::from_str::<CustomerSpec>(r#"{"id":"a","name":"A","tax":"x"}"#);
        assert!(unknown.is_err());
    }
    /// Issue 17, item 9: invoices are emailed to the customer's billing contact.
    #[test]
    fn a_billing_email_is_one_plain_address_and_stays_out_of_bodies_without_it() {
        let s = spec(r#"{"id":"acme","name":"Acme","billing_email":"ap+tally@acme.example"}"#);
        validate_customer(&s, "customer").expect("valid");
        assert_eq!(
            s.body(),
            r#"{"id":"acme","version":1,"name":"Acme","billing_email":"ap+tally@acme.example"}"#
        );
        let without = spec(r#"{"id":"acme","name":"Acme"}"#);
        assert_eq!(without.billing_email, None);
        assert!(!without.body().contains("billing_email"));
        let long_local = format!("{}@acme.example", "a".repeat(65));
        let long_label = format!("ap@{}.example", "a".repeat(64));
        for bad in [
            "",
            "acme.example",
            "@acme.example",
            "ap@",
            "ap@localhost",
            "ap@acme..example",
            "ap@-acme.example",
            "a..p@acme.example",
            ".ap@acme.example",
            "Acme <ap@acme.example>",
            "ap@acme.example\r\nBcc: x@evil.example",
            "ap@acme.example, x@evil.example",
            "ap\"x@acme.example",
            "jos\u{e9}@acme.example",
            long_local.as_str(),
            long_label.as_str(),
        ] {
            let json = serde_json::json!({"id": "acme", "name": "A", "billing_email": bad});
            let spec: CustomerSpec = serde_json::from_value(json).expect("a customer");
            let err = validate_customer(&spec, "customers[0]")
                .expect_err(bad)
                .to_string();
            assert!(err.contains("`customers[0].billing_email`"), "{bad}: {err}");
        }
    }
}
