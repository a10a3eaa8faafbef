//! Budgets: a limit on a customer's spend (or one agent's, optionally of one meter) per
//! billing period, with thresholds that notify once each and an optional hard stop. Stored
//! in `spend_budgets` (the latest version of each (customer, budget id) holds).
//!
//! A budget's limit is an amount in the customer's billing currency (the period's usage
//! charges before tax, as the rater prices them) or a quantity of one meter. This module
//! validates and stores budgets; it never decides a request.

use std::collections::BTreeMap;
use std::str::FromStr;

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{AgentId, CustomerId, MeterSlug};

/// What a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An amount of money (usage charges before tax).
    Amount,
    /// A quantity of the budget's meter.
    Quantity,
    /// The customer's prepaid wallet: an amount whose limit is what the wallet leaves for
    /// the period ([`super::wallet`]), set at every refresh; customer-wide, stored with a
    /// limit of 0.
    Wallet,
}

impl Kind {
    /// What the budget measures: a wallet is an amount.
    pub fn measured(self) -> Kind {
        match self {
            Kind::Wallet => Kind::Amount,
            k => k,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Amount => "amount",
            Kind::Quantity => "quantity",
            Kind::Wallet => "wallet",
        }
    }
}

/// One budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub customer: String,
    pub budget_id: String,
    /// Only this agent's spend (`None`: the whole customer).
    #[serde(default)]
    pub agent: Option<String>,
    /// Only this meter's spend (`None`: every meter; required for a quantity).
    #[serde(default)]
    pub meter: Option<String>,
    pub kind: Kind,
    /// The limit: an amount or a quantity, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub limit: Decimal,
    /// Percentages of the limit that notify once each per period (1 to 100, sorted).
    #[serde(default)]
    pub thresholds: Vec<u8>,
    /// Deny requests that would exceed the limit.
    #[serde(default)]
    pub hard: bool,
}

/// Why a budget is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("budget {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
}

fn invalid(field: &'static str, detail: impl Into<String>) -> BudgetError {
    BudgetError::Invalid {
        field,
        detail: detail.into(),
    }
}

impl Budget {
    /// Checks ids, the limit and the thresholds; sorts and deduplicates the thresholds.
    pub fn validated(mut self) -> Result<Budget, BudgetError> {
        CustomerId::validate(&self.customer).map_err(|e| invalid("customer", e.to_string()))?;
        let id_ok = !self.budget_id.is_empty()
            && self.budget_id.len() <= 64
            && self
                .budget_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !id_ok {
            return Err(invalid("budget_id", "must match [A-Za-z0-9_-]{1,64}"));
        }
        if let Some(a) = &self.agent {
            AgentId::validate(a).map_err(|e| invalid("agent", e.to_string()))?;
        }
        if let Some(m) = &self.meter {
            MeterSlug::new(m.clone()).map_err(|e| invalid("meter", e.to_string()))?;
        }
        if self.kind == Kind::Quantity && self.meter.is_none() {
            return Err(invalid("meter", "a quantity budget names its meter"));
        }
        if self.kind == Kind::Wallet
            && (self.agent.is_some() || self.meter.is_some() || !self.limit.is_zero())
        {
            return Err(invalid(
                "kind",
                "a wallet budget is the whole customer's, with limit 0 (the wallet sets it)",
            ));
        }
        if self.limit.is_sign_negative() || self.limit > Decimal::from(10u64.pow(15)) {
            return Err(invalid("limit", "must be 0 to 10^15"));
        }
        if self.thresholds.iter().any(|t| !(1..=100).contains(t)) {
            return Err(invalid("thresholds", "percentages from 1 to 100"));
        }
        self.thresholds.sort_unstable();
        self.thresholds.dedup();
        Ok(self)
    }

    /// The limit the decisions use when `spent` is the budget's spend so far: the stored one,
    /// or, for a wallet, what the grants hold plus the part of this period's reservation that
    /// live usage accounts for (`reserved`; [`super::wallet`]).
    pub fn limit_with(&self, spent: Decimal, reserved: Decimal) -> Decimal {
        match self.kind {
            Kind::Wallet => self.limit + reserved.min(spent).max(Decimal::ZERO),
            Kind::Amount | Kind::Quantity => self.limit,
        }
    }

    /// Whether spend of `agent` on `meter` counts against this budget.
    pub fn covers(&self, agent: &str, meter: &str) -> bool {
        self.agent.as_deref().is_none_or(|a| a == agent)
            && self.meter.as_deref().is_none_or(|m| m == meter)
    }
}

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct Row {
    customer: String,
    budget_id: String,
    agent: String,
    meter: String,
    kind: String,
    limit_value: String,
    thresholds: Vec<u8>,
    hard: u8,
    deleted: u8,
    version_ms: i64,
    actor: String,
}

/// Stores a version of `budget` (`deleted`: removes it), by `actor`.
pub async fn put(
    db: &Client,
    budget: &Budget,
    deleted: bool,
    actor: &str,
    now_ms: i64,
) -> Result<(), clickhouse::error::Error> {
    let row = Row {
        customer: budget.customer.clone(),
        budget_id: budget.budget_id.clone(),
        agent: budget.agent.clone().unwrap_or_default(),
        meter: budget.meter.clone().unwrap_or_default(),
        kind: budget.kind.as_str().into(),
        limit_value: budget.limit.to_string(),
        thresholds: budget.thresholds.clone(),
        hard: u8::from(budget.hard),
        deleted: u8::from(deleted),
        version_ms: now_ms,
        actor: actor.to_owned(),
    };
    let mut ins = db.insert::<Row>("spend_budgets").await?;
    ins.write(&row).await?;
    ins.end().await
}

/// Every budget in force, per customer. A stored row that is no longer valid is skipped
/// (and logged), never fatal.
pub async fn load(db: &Client) -> Result<BTreeMap<String, Vec<Budget>>, clickhouse::error::Error> {
    load_where(db, None).await
}

/// The budgets of one customer in force (reads only that customer's rows).
pub async fn load_customer(
    db: &Client,
    customer: &str,
) -> Result<Vec<Budget>, clickhouse::error::Error> {
    Ok(load_where(db, Some(customer))
        .await?
        .remove(customer)
        .unwrap_or_default())
}

async fn load_where(
    db: &Client,
    customer: Option<&str>,
) -> Result<BTreeMap<String, Vec<Budget>>, clickhouse::error::Error> {
    let filter = if customer.is_some() {
        "WHERE customer = ? "
    } else {
        ""
    };
    let sql = format!(
        "SELECT customer, budget_id, argMax(agent, version_ms) AS a, \
         argMax(meter, version_ms) AS m, argMax(kind, version_ms) AS k, \
         argMax(limit_value, version_ms) AS l, argMax(thresholds, version_ms) AS t, \
         argMax(hard, version_ms) AS h, argMax(deleted, version_ms) AS d, \
         max(version_ms) AS v, argMax(actor, version_ms) AS who \
         FROM spend_budgets {filter}GROUP BY customer, budget_id"
    );
    let mut query = db.query(&sql);
    if let Some(c) = customer {
        query = query.bind(c);
    }
    let rows: Vec<Row> = query.fetch_all().await?;
    let mut out: BTreeMap<String, Vec<Budget>> = BTreeMap::new();
    for r in rows.into_iter().filter(|r| r.deleted == 0) {
        let kind = match r.kind.as_str() {
            "amount" => Kind::Amount,
            "quantity" => Kind::Quantity,
            "wallet" => Kind::Wallet,
            other => {
                tracing::warn!(customer = %r.customer, budget = %r.budget_id, kind = other, "budget skipped: unknown kind");
                continue;
            }
        };
        let Ok(limit) = Decimal::from_str(&r.limit_value) else {
            tracing::warn!(customer = %r.customer, budget = %r.budget_id, "budget skipped: unreadable limit");
            continue;
        };
        let budget = Budget {
            customer: r.customer.clone(),
            budget_id: r.budget_id.clone(),
            agent: (!r.agent.is_empty()).then_some(r.agent),
            meter: (!r.meter.is_empty()).then_some(r.meter),
            kind,
            limit,
            thresholds: r.thresholds,
            hard: r.hard != 0,
        };
        match budget.validated() {
            Ok(b) => out.entry(r.customer).or_default().push(b),
            Err(e) => {
                tracing::warn!(customer = %r.customer, budget = %r.budget_id, error = %e, "budget skipped");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget {
            customer: "acme".into(),
            budget_id: "monthly".into(),
            agent: None,
            meter: None,
            kind: Kind::Amount,
            limit: Decimal::from(100),
            thresholds: vec![80, 50, 100, 50],
            hard: true,
        }
    }

    #[test]
    fn budgets_are_validated_and_thresholds_sorted() {
        let b = budget().validated().unwrap();
        assert_eq!(b.thresholds, vec![50, 80, 100]);
        assert!(b.covers("any-agent", "any-meter"));
        let per_agent = Budget {
            agent: Some("bot".into()),
            meter: Some("llm_tokens".into()),
            ..budget()
        };
        assert!(per_agent.covers("bot", "llm_tokens"));
        assert!(!per_agent.covers("other", "llm_tokens"));
        assert!(!per_agent.covers("bot", "tool_calls"));
        let wallet = Budget {
            kind: Kind::Wallet,
            limit: Decimal::ZERO,
            ..budget()
        }
        .validated()
        .unwrap();
        assert_eq!(wallet.kind.measured(), Kind::Amount);
        for bad in [
            Budget {
                budget_id: "a b".into(),
                ..budget()
            },
            Budget {
                kind: Kind::Quantity,
                ..budget()
            },
            Budget {
                limit: Decimal::from(-1),
                ..budget()
            },
            Budget {
                thresholds: vec![0],
                ..budget()
            },
            Budget {
                thresholds: vec![101],
                ..budget()
            },
            Budget {
                customer: "a.b".into(),
                ..budget()
            },
            Budget {
                kind: Kind::Wallet,
                ..budget()
            },
            Budget {
                kind: Kind::Wallet,
                limit: Decimal::ZERO,
                agent: Some("bot".into()),
                ..budget()
            },
        ] {
            assert!(bad.clone().validated().is_err(), "{bad:?}");
        }
    }
}
