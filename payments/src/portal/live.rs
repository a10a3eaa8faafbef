//! Live spend for the portal: the customer's balance asked of its spend decider over NATS
//! request/reply (`<payments.spend_subject_root>.balance.<customer>`, docs/SPEND.md), within
//! `portal.live_spend_timeout_ms`. Any failure (no decider answering, a timeout, an error
//! answer, a body that does not parse) is `None`: the page is shown without the live part,
//! saying so. Amounts are exact decimals, read from their strings.
//! It never fails the page and never asks about another customer.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

/// Where and how long to ask.
#[derive(Clone)]
pub struct LiveSpend {
    pub client: async_nats::Client,
    /// `spend.subject_root` of the deciders.
    pub subject_root: String,
    pub timeout: Duration,
}

/// Quantity and amount of one meter (or one agent's meter) this period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MeterSpend {
    #[serde(default)]
    pub quantity: Decimal,
    #[serde(default)]
    pub amount: Decimal,
}

/// A budget and how close it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BudgetUse {
    pub budget_id: String,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub meter: Option<String>,
    /// `amount` (the billing currency) or `quantity` (of `meter`).
    #[serde(default)]
    pub kind: String,
    pub limit: Decimal,
    pub spent: Decimal,
    #[serde(default)]
    pub held: Decimal,
    #[serde(default)]
    pub remaining: Decimal,
    #[serde(default)]
    pub hard: bool,
}

/// A metered limit of the plan and its use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LimitUse {
    pub meter: String,
    #[serde(default)]
    pub group: BTreeMap<String, String>,
    pub limit: Decimal,
    pub used: Decimal,
    #[serde(default)]
    pub held: Decimal,
    #[serde(default)]
    pub remaining: Decimal,
}

/// The plan's features and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Entitlements {
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub limits: Vec<LimitUse>,
}

/// The decider's answer (docs/SPEND.md, "Balance").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Balance {
    pub customer: String,
    #[serde(default)]
    pub currency: Option<String>,
    /// Usage charges of the period so far, before tax, unrounded.
    pub spend: Decimal,
    #[serde(default)]
    pub meters: BTreeMap<String, MeterSpend>,
    #[serde(default)]
    pub agents: BTreeMap<String, BTreeMap<String, MeterSpend>>,
    #[serde(default)]
    pub holds: u64,
    #[serde(default)]
    pub held_amount: Decimal,
    #[serde(default)]
    pub budgets: Vec<BudgetUse>,
    #[serde(default)]
    pub entitlements: Entitlements,
}

/// Reads a decider's answer for `customer`; `None` for an error answer, another customer's
/// balance or anything unreadable.
pub fn parse(customer: &str, body: &[u8]) -> Option<Balance> {
    match serde_json::from_slice::<Balance>(body) {
        Ok(b) if b.customer == customer => Some(b),
        Ok(b) => {
            tracing::warn!(customer, answered = %b.customer, "balance of another customer ignored");
            None
        }
        Err(e) => {
            tracing::debug!(customer, error = %e, body = %String::from_utf8_lossy(body), "balance answer not shown");
            None
        }
    }
}

impl LiveSpend {
    /// The customer's live balance, or `None` (see the module docs).
    pub async fn balance(&self, customer: &str) -> Option<Balance> {
        let subject = format!("{}.balance.{customer}", self.subject_root);
        match tokio::time::timeout(
            self.timeout,
            self.client.request(subject, Vec::new().into()),
        )
        .await
        {
            Ok(Ok(msg)) => parse(customer, &msg.payload),
            Ok(Err(e)) => {
                tracing::info!(customer, error = %e, "live spend unavailable");
                None
            }
            Err(_) => {
                tracing::info!(customer, "live spend unavailable: no answer in time");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deciders_answer_is_read_exactly() {
        let body = br#"{"customer": "acme", "period_start": "2026-12-01T00:00:00Z", "period_end": "2027-01-01T00:00:00Z",
            "currency": "USD", "spend": "1234.567",
            "meters": {"tool_calls": {"quantity": "28", "amount": "0.56"}},
            "agents": {"bot-1": {"tool_calls": {"quantity": "28", "amount": "0.56"}}},
            "holds": 2, "held_amount": "0.10",
            "budgets": [{"budget_id": "monthly", "agent": null, "meter": null, "kind": "amount",
                         "limit": "2000", "spent": "1234.567", "held": "0.10", "remaining": "765.333", "hard": true}],
            "entitlements": {"plan": "pro", "features": ["sso"], "limits": [{"meter": "tokens", "group": {"model": "gpt-4o"},
                "limit": "1000000", "used": "250000", "held": "0", "remaining": "750000"}]}}"#;
        let b = parse("acme", body).unwrap();
        assert_eq!(b.spend, "1234.567".parse::<Decimal>().unwrap());
        assert_eq!(b.meters["tool_calls"].quantity, Decimal::from(28));
        assert_eq!(b.budgets[0].kind, "amount");
        assert!(b.budgets[0].hard);
        assert_eq!(b.entitlements.limits[0].group["model"], "gpt-4o");
        assert_eq!(parse("globex", body), None);
        assert_eq!(parse("acme", br#"{"error":"unknown_customer"}"#), None);
        assert_eq!(parse("acme", b"not json"), None);
    }
}
