//! The agent SDK's spend control: ask before spending ([`SpendClient::authorize`]), give a
//! hold back ([`SpendClient::release`]), read a customer's balance. Requests go over NATS
//! request/reply to the spend deciders (`tally-spend`, docs/SPEND.md):
//! `<root>.authorize.<customer>.<agent>` and `<root>.balance.<customer>`.
//!
//! An allowed answer carries a hold id: put it on the usage events of that work
//! ([`crate::OutgoingEvent::hold_id`]) so their committed usage settles the hold, down to
//! what was used. Work that finishes below its `max_quantity` gives the rest back with
//! [`SpendClient::release`] once its usage is stored; otherwise the rest stays reserved until
//! the hold expires (deadline plus grace) and can deny requests that would fit. Work that
//! used all of it needs no release: its usage ends the hold. One step of an agent loop:
//!
//! ```no_run
//! use rust_decimal::Decimal;
//! use tally_domain::{AgentId, CustomerId, EventId};
//! use tally_ingest::spend::{AuthorizeRequest, SpendClient};
//! use tally_ingest::{OutgoingEvent, Publisher};
//!
//! # async fn call_the_model() -> Decimal { Decimal::from(1234) }
//! /// Asks, calls, reports what the call used, gives the rest back; false when denied.
//! async fn step(
//!     spend: &SpendClient,
//!     usage: &mut Publisher,
//!     (customer, agent): (&CustomerId, &AgentId),
//!     id: EventId,
//! ) -> Result<bool, Box<dyn std::error::Error>> {
//!     let max = Decimal::from(4000);
//!     let req = AuthorizeRequest::new("llm_tokens", max);
//!     let ok = spend.authorize(customer, agent, &req).await?;
//!     if !ok.allow {
//!         return Ok(false); // ok.reason: budget_exceeded, unavailable, ...
//!     }
//!     let used = call_the_model().await; // what the model's response says it used
//!     let hold_id = ok.hold_id.as_deref().map(EventId::new).transpose()?;
//!     usage
//!         .publish(&OutgoingEvent {
//!             id,
//!             customer: customer.clone(),
//!             agent: agent.clone(),
//!             event_type: "llm.tokens".into(),
//!             time: chrono::Utc::now(),
//!             data: serde_json::json!({"tokens": used.to_string(), "model": "gpt-4o", "kind": "output"}),
//!             hold_id: hold_id.clone(),
//!         })
//!         .await?;
//!     usage.flush().await?; // the usage is stored before the rest goes back
//!     if let Some(hold) = hold_id.filter(|_| used < max) {
//!         spend.release(customer, agent, hold.as_str()).await?;
//!     }
//!     Ok(true)
//! }
//! ```
//!
//! When no decider answers (timeout, no responders), the [`FailurePolicy`] decides: fail
//! closed (deny, reason `unavailable`), or fail open only within a fixed allowance per
//! customer and meter for the client's life, never without limit. It owns the client side
//! of the protocol only; it never decides anything the decider would.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{AgentId, CustomerId};

/// What to do when no decider answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Deny with reason `unavailable` (the default).
    Closed,
    /// Allow without a hold while the declared quantities of a customer's meter, summed over
    /// the client's life, stay within `allowance`; deny beyond it.
    OpenWithin { allowance: Decimal },
}

/// One request: the most the work may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorizeRequest {
    pub meter: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub max_quantity: Decimal,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub group: BTreeMap<String, String>,
    /// How long the work may take (ms); the decider's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// The hold's id; a retry with the same id gets the same hold. Set by
    /// [`SpendClient::authorize`] when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl AuthorizeRequest {
    pub fn new(meter: &str, max_quantity: Decimal) -> AuthorizeRequest {
        AuthorizeRequest {
            meter: meter.to_owned(),
            max_quantity,
            group: BTreeMap::new(),
            deadline_ms: None,
            request_id: None,
        }
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Authorization {
    pub allow: bool,
    /// The hold to name on the work's usage events (`holdid`).
    #[serde(default)]
    pub hold_id: Option<String>,
    /// What is left of the tightest budget after this request.
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub remaining: Option<Decimal>,
    #[serde(default)]
    pub currency: Option<String>,
    /// The stable reason code of a denial (`budget_exceeded`, `unavailable`, ...).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    /// Decided by the client's failure policy, no decider answered.
    #[serde(skip)]
    pub offline: bool,
}

/// Why a call could not be made at all (never for a denial or an unavailable decider).
#[derive(Debug, thiserror::Error)]
pub enum SpendError {
    #[error("the decider's answer is not readable: {0}")]
    Answer(String),
    #[error("request: {0}")]
    Request(String),
}

/// A client of the spend deciders.
pub struct SpendClient {
    client: async_nats::Client,
    root: String,
    timeout: Duration,
    policy: FailurePolicy,
    /// Declared quantities allowed offline, per (customer, meter).
    offline_used: Mutex<HashMap<(String, String), Decimal>>,
}

impl SpendClient {
    /// A client for the deciders under `root` (`spend.subject_root`, default `tally`),
    /// waiting `timeout` for each answer.
    pub fn new(
        client: async_nats::Client,
        root: &str,
        timeout: Duration,
        policy: FailurePolicy,
    ) -> SpendClient {
        SpendClient {
            client,
            root: root.to_owned(),
            timeout,
            policy,
            offline_used: Mutex::new(HashMap::new()),
        }
    }

    /// Asks whether `agent` of `customer` may spend up to `req.max_quantity` of `req.meter`.
    /// A timeout is retried once with the same request id (the decider answers a repeat
    /// with the same hold); then the failure policy decides.
    pub async fn authorize(
        &self,
        customer: &CustomerId,
        agent: &AgentId,
        req: &AuthorizeRequest,
    ) -> Result<Authorization, SpendError> {
        let mut req = req.clone();
        if req.request_id.is_none() {
            req.request_id = Some(uuid::Uuid::new_v4().simple().to_string());
        }
        let body = serde_json::to_vec(&req).map_err(|e| SpendError::Request(e.to_string()))?;
        let subject = format!("{}.authorize.{customer}.{agent}", self.root);
        for _ in 0..2 {
            if let Some(bytes) = self.ask(&subject, &body).await? {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| SpendError::Answer(e.to_string()));
            }
        }
        Ok(self.offline(customer.as_str(), &req))
    }

    /// Gives what is left of hold `hold_id` back: call it once the work is done below its
    /// `max_quantity` (after its usage events, which name the hold, are stored) or was
    /// cancelled; usage settles a hold only down to what was used, so otherwise the rest stays
    /// reserved until the hold expires. `Ok(false)` when the decider did not hold it (used up,
    /// released, expired, another agent's) or did not answer.
    /// [`SpendError::Request`] for a hold id the decider could not have given (nothing is
    /// sent).
    pub async fn release(
        &self,
        customer: &CustomerId,
        agent: &AgentId,
        hold_id: &str,
    ) -> Result<bool, SpendError> {
        let body = release_body(hold_id)?;
        let subject = format!("{}.authorize.{customer}.{agent}", self.root);
        match self.ask(&subject, &body).await? {
            Some(bytes) => {
                let a: Authorization = serde_json::from_slice(&bytes)
                    .map_err(|e| SpendError::Answer(e.to_string()))?;
                Ok(a.allow)
            }
            None => Ok(false),
        }
    }

    /// The customer's balance as the decider holds it (JSON: spend, meters, agents, holds,
    /// budgets); `None` when no decider answered.
    pub async fn balance(
        &self,
        customer: &CustomerId,
    ) -> Result<Option<serde_json::Value>, SpendError> {
        let subject = format!("{}.balance.{customer}", self.root);
        match self.ask(&subject, b"").await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| SpendError::Answer(e.to_string())),
            None => Ok(None),
        }
    }

    /// One request; `None` when nobody answered in time.
    async fn ask(&self, subject: &str, body: &[u8]) -> Result<Option<bytes::Bytes>, SpendError> {
        let request = self
            .client
            .request(subject.to_owned(), bytes::Bytes::copy_from_slice(body));
        match tokio::time::timeout(self.timeout, request).await {
            Err(_) => Ok(None),
            Ok(Ok(msg)) => Ok(Some(msg.payload)),
            Ok(Err(e)) => match e.kind() {
                async_nats::RequestErrorKind::TimedOut
                | async_nats::RequestErrorKind::NoResponders => Ok(None),
                _ => Err(SpendError::Request(e.to_string())),
            },
        }
    }

    /// The failure policy's answer.
    fn offline(&self, customer: &str, req: &AuthorizeRequest) -> Authorization {
        let mut used = match self.offline_used.lock() {
            Ok(u) => u,
            Err(p) => p.into_inner(),
        };
        offline_decision(&self.policy, &mut used, customer, req)
    }
}

/// What `policy` answers for `req` when no decider did; `used` holds the declared
/// quantities allowed offline so far per (customer, meter). Pure.
fn offline_decision(
    policy: &FailurePolicy,
    used: &mut HashMap<(String, String), Decimal>,
    customer: &str,
    req: &AuthorizeRequest,
) -> Authorization {
    let deny = |detail: &str| Authorization {
        allow: false,
        hold_id: None,
        remaining: None,
        currency: None,
        reason: Some("unavailable".into()),
        detail: Some(detail.to_owned()),
        offline: true,
    };
    let FailurePolicy::OpenWithin { allowance } = policy else {
        return deny("no spend decider answered (fail closed)");
    };
    let key = (customer.to_owned(), req.meter.clone());
    let so_far = used.get(&key).copied().unwrap_or_default();
    match so_far.checked_add(req.max_quantity) {
        Some(total) if total <= *allowance => {
            used.insert(key, total);
            Authorization {
                allow: true,
                hold_id: None,
                remaining: allowance.checked_sub(total),
                currency: None,
                reason: None,
                detail: Some(
                    "no spend decider answered: allowed within the offline allowance".into(),
                ),
                offline: true,
            }
        }
        _ => deny("no spend decider answered and the offline allowance is used up"),
    }
}

/// The body of a release request; a hold id is an event id (the authorize `request_id`).
fn release_body(hold_id: &str) -> Result<Vec<u8>, SpendError> {
    tally_domain::EventId::validate(hold_id)
        .map_err(|e| SpendError::Request(format!("hold id: {e}")))?;
    serde_json::to_vec(&serde_json::json!({ "release": hold_id }))
        .map_err(|e| SpendError::Request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_names_a_valid_hold_id_or_is_refused_before_sending() {
        let body: serde_json::Value =
            serde_json::from_slice(&release_body("7f3c-work-1").expect("valid")).expect("json");
        assert_eq!(body, serde_json::json!({ "release": "7f3c-work-1" }));
        for bad in ["", "bad id with spaces", &"x".repeat(1000)] {
            let e = release_body(bad).expect_err(bad);
            assert!(
                matches!(&e, SpendError::Request(m) if m.starts_with("hold id: ")),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn fail_closed_denies_and_fail_open_stops_at_the_allowance() {
        let req = AuthorizeRequest::new("tokens", Decimal::from(400));
        let mut used = HashMap::new();
        let a = offline_decision(&FailurePolicy::Closed, &mut used, "acme", &req);
        assert!(!a.allow && a.offline);
        assert_eq!(a.reason.as_deref(), Some("unavailable"));
        assert!(used.is_empty());

        let open = FailurePolicy::OpenWithin {
            allowance: Decimal::from(1000),
        };
        assert!(offline_decision(&open, &mut used, "acme", &req).allow);
        assert!(offline_decision(&open, &mut used, "acme", &req).allow);
        // 1200 > 1000: denied; exactly the 200 left still fits, then nothing
        assert!(!offline_decision(&open, &mut used, "acme", &req).allow);
        let rest = AuthorizeRequest::new("tokens", Decimal::from(200));
        let a = offline_decision(&open, &mut used, "acme", &rest);
        assert!(a.allow && a.hold_id.is_none());
        assert_eq!(a.remaining, Some(Decimal::ZERO));
        let one = AuthorizeRequest::new("tokens", Decimal::ONE);
        assert!(!offline_decision(&open, &mut used, "acme", &one).allow);
        // another customer, another meter: their own allowance
        assert!(offline_decision(&open, &mut used, "globex", &req).allow);
        assert!(
            offline_decision(
                &open,
                &mut used,
                "acme",
                &AuthorizeRequest::new("calls", Decimal::ONE)
            )
            .allow
        );
    }

    #[test]
    fn requests_serialize_quantities_exactly() {
        let mut r = AuthorizeRequest::new("llm_tokens", "0.000001".parse().unwrap());
        r.request_id = Some("r1".into());
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"meter":"llm_tokens","max_quantity":"0.000001","request_id":"r1"}"#
        );
        let a: Authorization = serde_json::from_str(
            r#"{"allow":false,"reason":"budget_exceeded","remaining":"0.5","detail":"budget b"}"#,
        )
        .unwrap();
        assert_eq!(a.reason.as_deref(), Some("budget_exceeded"));
        assert_eq!(a.remaining, Some("0.5".parse().unwrap()));
    }
}
