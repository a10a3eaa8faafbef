//! The spend API's messages: an authorize request (`<root>.authorize.<customer>.<agent>`, over
//! NATS request/reply and HTTP), its answer, and the stable reason codes of a denial.
//!
//! Parsing is strict and bounded: a body of at most [`BODY_MAX_BYTES`], no unknown fields, a
//! quantity written exactly (string or integer, never a float), at most 10^15 per request,
//! at most [`GROUP_MAX`] group values of at most 256 bytes each, a deadline of at most the
//! configured maximum. Pure: no I/O.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_domain::{exact, AgentId, CustomerId, EventId};

/// The largest request body.
pub const BODY_MAX_BYTES: usize = 4096;
/// The most group-by values a request may name.
pub const GROUP_MAX: usize = 16;
/// The largest quantity one request may declare (the largest quantity of one event).
pub fn quantity_max() -> Decimal {
    Decimal::from(1_000_000_000_000_000u64)
}

/// Why a request was denied (or could not be decided): the `reason` of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A hard budget (amount or quantity) would be exceeded.
    BudgetExceeded,
    /// The customer has no subscription and there is no default plan.
    UnknownCustomer,
    /// The meter is not declared.
    UnknownMeter,
    /// The body is not a valid request (see `detail`).
    InvalidRequest,
    /// `max_quantity` is above the largest quantity of one event.
    QuantityTooLarge,
    /// The hold to release is not held (already settled, released or expired).
    UnknownHold,
    /// The decision could not be made durable; nothing was held. Retry.
    Unavailable,
    /// A metered limit of the customer's plan (its entitlements) would be exceeded.
    EntitlementExceeded,
    /// The customer's plan does not have the feature asked about.
    NotEntitled,
    /// The customer already has `spend.max_holds_per_customer` holds: release or finish one.
    TooManyHolds,
}

impl Reason {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::BudgetExceeded => "budget_exceeded",
            Reason::UnknownCustomer => "unknown_customer",
            Reason::UnknownMeter => "unknown_meter",
            Reason::InvalidRequest => "invalid_request",
            Reason::QuantityTooLarge => "quantity_too_large",
            Reason::UnknownHold => "unknown_hold",
            Reason::Unavailable => "unavailable",
            Reason::EntitlementExceeded => "entitlement_exceeded",
            Reason::NotEntitled => "not_entitled",
            Reason::TooManyHolds => "too_many_holds",
        }
    }
}

/// What the body of `<root>.authorize.<customer>.<agent>` asks.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeBody {
    /// The meter the work will use.
    pub meter: Option<String>,
    /// The most it may use; exact (a string or an integer).
    #[serde(default, deserialize_with = "exact::opt_decimal")]
    pub max_quantity: Option<Decimal>,
    /// Group-by values the usage will carry (`{"model": "gpt-4o"}`), for prices per group.
    #[serde(default)]
    pub group: BTreeMap<String, String>,
    /// How long the work may take (ms); the hold lasts this long plus the grace.
    pub deadline_ms: Option<u64>,
    /// Instead of authorizing: give a hold back (the work was cancelled or used nothing).
    pub release: Option<String>,
    /// Instead of authorizing: does the customer's plan have this feature?
    pub feature: Option<String>,
    /// The caller's id for this request (an id: `[A-Za-z0-9...]`, at most 128 characters),
    /// used as the hold id: asking again with the same id (after a timeout) answers with the
    /// same hold instead of placing a second one.
    pub request_id: Option<String>,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Authorize {
        customer: CustomerId,
        agent: AgentId,
        meter: String,
        quantity: Decimal,
        group: BTreeMap<String, String>,
        deadline_ms: u64,
        request_id: Option<String>,
    },
    Release {
        customer: CustomerId,
        /// Only the agent that holds it may give a hold back.
        agent: AgentId,
        hold: String,
    },
    Feature {
        customer: CustomerId,
        feature: String,
    },
}

/// The answer to an authorize or release request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub allow: bool,
    /// The hold placed (allowed requests): send it as the `holdid` of the usage event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    /// What is left of the tightest budget after this request (amount or quantity), when a
    /// budget applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<Decimal>,
    /// The currency of amounts (the customer's billing currency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Why it was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The budget that denied it, or what was wrong with the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Answer {
    /// A denial.
    pub fn deny(reason: Reason, detail: impl Into<String>) -> Answer {
        Answer {
            allow: false,
            hold_id: None,
            remaining: None,
            currency: None,
            reason: Some(reason),
            detail: Some(detail.into()),
        }
    }
}

/// Reads a request for `customer`'s `agent` (the subject's tokens) from `body`.
pub fn parse(
    customer: &str,
    agent: &str,
    body: &[u8],
    hold_default_ms: u64,
    hold_max_ms: u64,
) -> Result<Request, Answer> {
    let invalid = |d: String| Answer::deny(Reason::InvalidRequest, d);
    if body.len() > BODY_MAX_BYTES {
        return Err(invalid(format!(
            "the body is {} bytes, at most {BODY_MAX_BYTES}",
            body.len()
        )));
    }
    let customer = CustomerId::new(customer).map_err(|e| invalid(format!("customer: {e}")))?;
    let agent = AgentId::new(agent).map_err(|e| invalid(format!("agent: {e}")))?;
    let b: AuthorizeBody =
        serde_json::from_slice(body).map_err(|e| invalid(format!("body: {e}")))?;
    if let Some(hold) = b.release {
        if b.meter.is_some() || b.max_quantity.is_some() || b.request_id.is_some() {
            return Err(invalid("a release names only the hold".into()));
        }
        EventId::validate(&hold).map_err(|e| invalid(format!("release: {e}")))?;
        return Ok(Request::Release {
            customer,
            agent,
            hold,
        });
    }
    if let Some(feature) = b.feature {
        if b.meter.is_some() || b.max_quantity.is_some() || b.request_id.is_some() {
            return Err(invalid("a feature question names only the feature".into()));
        }
        if feature.is_empty() || feature.len() > 64 {
            return Err(invalid("feature: 1 to 64 characters".into()));
        }
        return Ok(Request::Feature { customer, feature });
    }
    let meter = b.meter.ok_or_else(|| invalid("meter is missing".into()))?;
    let quantity = b
        .max_quantity
        .ok_or_else(|| invalid("max_quantity is missing".into()))?;
    if quantity.is_sign_negative() || quantity.is_zero() {
        return Err(invalid("max_quantity must be positive".into()));
    }
    if quantity > quantity_max() {
        return Err(Answer::deny(
            Reason::QuantityTooLarge,
            format!("max_quantity is above {}", quantity_max()),
        ));
    }
    if b.group.len() > GROUP_MAX || b.group.iter().any(|(k, v)| k.len() > 256 || v.len() > 256) {
        return Err(invalid(format!(
            "group: at most {GROUP_MAX} values of at most 256 bytes"
        )));
    }
    let deadline_ms = b.deadline_ms.unwrap_or(hold_default_ms);
    if deadline_ms == 0 || deadline_ms > hold_max_ms {
        return Err(invalid(format!("deadline_ms must be 1 to {hold_max_ms}")));
    }
    if let Some(id) = &b.request_id {
        EventId::validate(id).map_err(|e| invalid(format!("request_id: {e}")))?;
    }
    Ok(Request::Authorize {
        customer,
        agent,
        meter,
        quantity,
        group: b.group,
        deadline_ms,
        request_id: b.request_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(body: &str) -> Result<Request, Answer> {
        parse("acme", "bot", body.as_bytes(), 60_000, 900_000)
    }

    #[test]
    fn a_feature_question_names_only_the_feature() {
        assert!(matches!(
            p(r#"{"feature":"web_search"}"#),
            Ok(Request::Feature { feature, .. }) if feature == "web_search"
        ));
        for bad in [
            r#"{"feature":"web_search","meter":"m"}"#,
            r#"{"feature":""}"#,
            r#"{"feature":5}"#,
        ] {
            assert_eq!(
                p(bad).unwrap_err().reason,
                Some(Reason::InvalidRequest),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_request_is_read_exactly() {
        let r =
            p(r#"{"meter":"llm_tokens","max_quantity":"4000.5","group":{"model":"m"}}"#).unwrap();
        let Request::Authorize {
            quantity,
            deadline_ms,
            group,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(quantity, Decimal::new(40005, 1));
        assert_eq!(deadline_ms, 60_000);
        assert_eq!(group["model"], "m");
        assert!(matches!(
            p(r#"{"release":"h-1"}"#).unwrap(),
            Request::Release { .. }
        ));
    }

    #[test]
    fn hostile_requests_get_a_reason() {
        let reason = |body: &str| p(body).unwrap_err().reason.unwrap();
        for bad in [
            "not json",
            "{}",
            r#"{"meter":"m"}"#,
            r#"{"meter":"m","max_quantity":1.5}"#,
            r#"{"meter":"m","max_quantity":"-1"}"#,
            r#"{"meter":"m","max_quantity":"0"}"#,
            r#"{"meter":"m","max_quantity":"1","extra":1}"#,
            r#"{"meter":"m","max_quantity":"1","deadline_ms":0}"#,
            r#"{"meter":"m","max_quantity":"1","deadline_ms":900001}"#,
            r#"{"release":"h","meter":"m"}"#,
            r#"{"release":"bad id with spaces"}"#,
        ] {
            assert_eq!(reason(bad), Reason::InvalidRequest, "{bad}");
        }
        assert_eq!(
            reason(r#"{"meter":"m","max_quantity":"1e30"}"#),
            Reason::InvalidRequest,
            "exponents are not exact decimals"
        );
        assert_eq!(
            reason(r#"{"meter":"m","max_quantity":"10000000000000000000"}"#),
            Reason::QuantityTooLarge
        );
        let huge = format!(r#"{{"meter":"{}","max_quantity":"1"}}"#, "m".repeat(5000));
        assert_eq!(reason(&huge), Reason::InvalidRequest);
        let groups: String = (0..17).map(|i| format!(r#""g{i}":"v","#)).collect();
        let many = format!(
            r#"{{"meter":"m","max_quantity":"1","group":{{{}}}}}"#,
            groups.trim_end_matches(',')
        );
        assert_eq!(reason(&many), Reason::InvalidRequest);
        assert_eq!(
            parse("bad customer", "bot", b"{}", 1, 1)
                .unwrap_err()
                .reason,
            Some(Reason::InvalidRequest)
        );
    }

    #[test]
    fn answers_carry_stable_codes() {
        let a = Answer::deny(Reason::BudgetExceeded, "budget b1");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"allow":false,"reason":"budget_exceeded","detail":"budget b1"}"#
        );
        assert_eq!(Reason::BudgetExceeded.code(), "budget_exceeded");
        assert_eq!(Reason::TooManyHolds.code(), "too_many_holds");
        let a = Answer::deny(Reason::TooManyHolds, "10000 holds");
        assert!(serde_json::to_string(&a)
            .unwrap()
            .contains(r#""reason":"too_many_holds""#));
    }
}

/// Property tests of the parser (issue 16: the authorize parser faces every agent): no input
/// makes it panic, and whatever it accepts is within the bounds the decider relies on.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const HOLD_DEFAULT: u64 = 60_000;
    const HOLD_MAX: u64 = 900_000;

    fn accepted_within_bounds(r: &Request) {
        match r {
            Request::Authorize {
                quantity,
                deadline_ms,
                group,
                request_id,
                ..
            } => {
                assert!(*quantity > Decimal::ZERO && *quantity <= quantity_max());
                assert!((1..=HOLD_MAX).contains(deadline_ms));
                assert!(group.len() <= GROUP_MAX);
                assert!(group.iter().all(|(k, v)| k.len() <= 256 && v.len() <= 256));
                if let Some(id) = request_id {
                    assert!(EventId::validate(id).is_ok());
                }
            }
            Request::Release { hold, .. } => assert!(EventId::validate(hold).is_ok()),
            Request::Feature { feature, .. } => {
                assert!(!feature.is_empty() && feature.len() <= 64);
            }
        }
    }

    /// A JSON value of the kinds the fields may be given, well-formed or not.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[-+0-9.eE]{0,40}".prop_map(serde_json::Value::from),
            "[a-zA-Z0-9_.:-]{0,140}".prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{0,300}", "[a-z]{0,300}", 0..20)
                .prop_map(|m| serde_json::json!(m)),
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            Just("meter"),
            Just("max_quantity"),
            Just("group"),
            Just("deadline_ms"),
            Just("release"),
            Just("feature"),
            Just("request_id"),
            Just("unknown"),
        ];
        prop::collection::btree_map(field, value(), 0..8)
            .prop_map(|m| serde_json::to_vec(&m).unwrap_or_default())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            customer in "[a-zA-Z0-9_.*>-]{0,70}",
            agent in "[a-zA-Z0-9_.*>-]{0,70}",
            body in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            if let Ok(r) = parse(&customer, &agent, &body, HOLD_DEFAULT, HOLD_MAX) {
                accepted_within_bounds(&r);
            }
        }

        #[test]
        fn structured_bodies_are_accepted_only_within_bounds(body in body()) {
            match parse("acme", "bot", &body, HOLD_DEFAULT, HOLD_MAX) {
                Ok(r) => accepted_within_bounds(&r),
                Err(a) => {
                    prop_assert!(!a.allow);
                    prop_assert!(a.reason.is_some());
                    prop_assert!(a.hold_id.is_none());
                }
            }
        }

        /// Any positive quantity up to the maximum, written as a string, is read exactly.
        #[test]
        fn quantities_are_read_exactly(units in 1u64..=1_000_000_000_000, scale in 0u32..=8) {
            let q = Decimal::new(i64::try_from(units).unwrap_or(i64::MAX), scale);
            prop_assume!(q <= quantity_max());
            let body = format!(r#"{{"meter":"m","max_quantity":"{q}"}}"#);
            let r = parse("acme", "bot", body.as_bytes(), HOLD_DEFAULT, HOLD_MAX).unwrap();
            let Request::Authorize { quantity, deadline_ms, .. } = r else {
                panic!("an authorize request");
            };
            prop_assert_eq!(quantity, q);
            prop_assert_eq!(deadline_ms, HOLD_DEFAULT);
        }
    }
}
