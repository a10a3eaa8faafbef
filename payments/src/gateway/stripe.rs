//! The Stripe-compatible adapter: PaymentIntent requests in Stripe's documented shape, and
//! webhooks verified by the `Stripe-Signature` header (HMAC-SHA256 over `"{t}.{payload}"`
//! with the endpoint secret, within a timestamp tolerance) before a byte of the payload is
//! interpreted.
//!
//! Events acted on: `payment_intent.succeeded`, `payment_intent.payment_failed` (the invoice
//! id travels in the PaymentIntent's `metadata[invoice_id]`, set by [`Stripe::collect_request`]),
//! `refund.created`, `charge.refunded` when it lists `refunds.data` (older API versions), and
//! `charge.dispute.created` / `funds_withdrawn` / `funds_reinstated` / `closed` (the disputed
//! payment by the dispute's `payment_intent`);
//! a refund is matched to the payment by `payment_intent`, and the refund id is the
//! idempotency key, so both events for one refund book it once. Every other type is accepted
//! and ignored. No network call is made here.
//! It never interprets a payload whose signature did not verify, and never calls Stripe.

use serde::Deserialize;

use super::{
    Collect, DisputeChange, Effect, Gateway, GatewayError, GatewayEvent, GatewayRequest, Retry,
};
use crate::signature::{self, Secret};

/// The adapter, holding the endpoint secret.
#[derive(Debug, Clone)]
pub struct Stripe {
    secret: Secret,
    tolerance_secs: i64,
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    created: i64,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct PaymentIntent {
    id: String,
    amount: i64,
    #[serde(default)]
    amount_received: Option<i64>,
    currency: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    last_payment_error: Option<PaymentError>,
    /// An id, or the expanded object.
    #[serde(default)]
    payment_method: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct PaymentError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    payment_method: Option<serde_json::Value>,
}

/// The id of a payment method given as an id or as an object with `id`.
fn method_id(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(id)) => id.clone(),
        Some(o) => o
            .get("id")
            .and_then(|i| i.as_str())
            .unwrap_or_default()
            .to_owned(),
        None => String::new(),
    }
}

#[derive(Deserialize)]
struct Charge {
    currency: String,
    payment_intent: Option<String>,
    refunds: Option<RefundList>,
}

#[derive(Deserialize)]
struct RefundList {
    data: Vec<Refund>,
}

#[derive(Deserialize)]
struct Refund {
    id: String,
    amount: i64,
}

/// A Refund object (`refund.created`).
#[derive(Deserialize)]
struct RefundObject {
    id: String,
    amount: i64,
    currency: String,
    payment_intent: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// A Dispute object (`charge.dispute.*`).
#[derive(Deserialize)]
struct DisputeObject {
    id: String,
    amount: i64,
    currency: String,
    #[serde(default)]
    payment_intent: Option<String>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

fn payload<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    what: &str,
) -> Result<T, GatewayError> {
    serde_json::from_value(v).map_err(|e| GatewayError::Payload(format!("{what}: {e}")))
}

impl Stripe {
    pub fn new(endpoint_secret: &str, tolerance_secs: i64) -> Stripe {
        Stripe {
            secret: Secret::new(endpoint_secret),
            tolerance_secs,
        }
    }

    /// Verifies the `Stripe-Signature` header over the raw body at `now_secs`, then decodes.
    pub fn decode(
        &self,
        signature_header: Option<&str>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<GatewayEvent, GatewayError> {
        signature::verify(
            &self.secret,
            signature_header,
            body,
            now_secs,
            self.tolerance_secs,
        )?;
        let event: Event = serde_json::from_slice(body)
            .map_err(|e| GatewayError::Payload(format!("event: {e}")))?;
        let effect = effect(&event.event_type, event.data.object)?;
        Ok(GatewayEvent {
            event_id: event.id,
            event_type: event.event_type,
            created_secs: event.created,
            effect,
        })
    }
}

/// What an event of `event_type` with `object` does; `None` for events only acknowledged.
fn effect(event_type: &str, object: serde_json::Value) -> Result<Option<Effect>, GatewayError> {
    match event_type {
        "payment_intent.succeeded" => payment_intent(object, true).map(Some),
        "payment_intent.payment_failed" => payment_intent(object, false).map(Some),
        "charge.refunded" => charge_refunded(object),
        "refund.created" => refund_created(object),
        "charge.dispute.created"
        | "charge.dispute.funds_withdrawn"
        | "charge.dispute.funds_reinstated"
        | "charge.dispute.closed" => dispute(event_type, object).map(Some),
        _ => Ok(None),
    }
}

/// A PaymentIntent that `succeeded` or failed, for the invoice in its metadata.
fn payment_intent(object: serde_json::Value, succeeded: bool) -> Result<Effect, GatewayError> {
    let pi: PaymentIntent = payload(object, "payment_intent")?;
    let invoice_id = pi.metadata.get("invoice_id").cloned().ok_or_else(|| {
        GatewayError::Payload(format!("payment_intent {}: no metadata.invoice_id", pi.id))
    })?;
    let currency = pi.currency.to_ascii_uppercase();
    if succeeded {
        return Ok(Effect::PaymentSucceeded {
            payment_ref: pi.id,
            invoice_id,
            amount_minor: pi.amount_received.unwrap_or(pi.amount),
            currency,
            payment_method: method_id(pi.payment_method.as_ref()),
        });
    }
    let error = pi.last_payment_error.as_ref();
    let payment_method = method_id(
        error
            .and_then(|e| e.payment_method.as_ref())
            .or(pi.payment_method.as_ref()),
    );
    let reason = error
        .and_then(|e| e.code.clone().or_else(|| e.message.clone()))
        .unwrap_or_default();
    Ok(Effect::PaymentFailed {
        payment_ref: pi.id,
        invoice_id,
        amount_minor: pi.amount,
        currency,
        reason,
        payment_method,
    })
}

/// `charge.refunded`: API versions since 2022-11-15 no longer include `refunds` in the
/// charge: then this event is only acknowledged, and `refund.created` carries the refund.
fn charge_refunded(object: serde_json::Value) -> Result<Option<Effect>, GatewayError> {
    let ch: Charge = payload(object, "charge")?;
    Ok(
        match (
            ch.refunds.and_then(|r| r.data.into_iter().next()),
            ch.payment_intent,
        ) {
            (Some(refund), Some(payment_ref)) => Some(Effect::Refunded {
                refund_ref: refund.id,
                payment_ref,
                amount_minor: refund.amount,
                currency: ch.currency.to_ascii_uppercase(),
            }),
            _ => None,
        },
    )
}

/// `refund.created`: a refund unless it failed or was canceled.
fn refund_created(object: serde_json::Value) -> Result<Option<Effect>, GatewayError> {
    let r: RefundObject = payload(object, "refund")?;
    let payment_ref = r
        .payment_intent
        .ok_or_else(|| GatewayError::Payload(format!("refund {}: no payment_intent", r.id)))?;
    Ok(
        (r.status.as_deref() != Some("failed") && r.status.as_deref() != Some("canceled")).then(
            || Effect::Refunded {
                refund_ref: r.id,
                payment_ref,
                amount_minor: r.amount,
                currency: r.currency.to_ascii_uppercase(),
            },
        ),
    )
}

/// A `charge.dispute.*` event: opened, funds withdrawn or reinstated, closed.
fn dispute(event_type: &str, object: serde_json::Value) -> Result<Effect, GatewayError> {
    let d: DisputeObject = payload(object, "dispute")?;
    let payment_ref = d
        .payment_intent
        .ok_or_else(|| GatewayError::Payload(format!("dispute {}: no payment_intent", d.id)))?;
    let change = match event_type {
        "charge.dispute.created" => DisputeChange::Opened { status: d.status },
        "charge.dispute.funds_withdrawn" => DisputeChange::FundsWithdrawn,
        "charge.dispute.funds_reinstated" => DisputeChange::FundsReinstated,
        _ => DisputeChange::Closed { status: d.status },
    };
    Ok(Effect::Disputed {
        dispute_ref: d.id,
        payment_ref,
        amount_minor: d.amount,
        currency: d.currency.to_ascii_uppercase(),
        reason: d.reason.unwrap_or_default(),
        change,
    })
}

impl Gateway for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    /// `POST /v1/payment_intents` (first attempt) with `confirm=true` and `off_session=true`
    /// so the customer's saved payment method is charged; retries use a new idempotency key
    /// per step so each is a real new attempt, while a resent step never charges twice.
    fn collect_request(&self, c: &Collect<'_>) -> Option<GatewayRequest> {
        let mut form: Vec<(String, String)> = vec![
            ("amount".into(), c.amount_minor.to_string()),
            ("currency".into(), c.currency.code().to_ascii_lowercase()),
        ];
        for (k, v) in [
            ("customer", c.provider_customer),
            ("payment_method", c.payment_method),
        ] {
            if !v.is_empty() {
                form.push((k.into(), v.to_owned()));
            }
        }
        Some(GatewayRequest {
            method: "POST",
            path: "/v1/payment_intents".into(),
            idempotency_key: format!("tally-{}-{}", c.invoice_id, c.attempt),
            form: form
                .into_iter()
                .chain([
                    ("confirm".into(), "true".into()),
                    ("off_session".into(), "true".into()),
                    ("description".into(), format!("Invoice {}", c.invoice_id)),
                    ("metadata[invoice_id]".into(), c.invoice_id.to_owned()),
                    ("metadata[customer]".into(), c.customer.to_string()),
                    ("metadata[attempt]".into(), c.attempt.to_string()),
                ])
                .collect(),
        })
    }

    /// `POST /v1/payment_intents/{id}/confirm` with the payment method that failed and
    /// `off_session=true`: Stripe charges it again; the outcome arrives as a webhook. One
    /// idempotency key per dunning step, so a resent step never charges twice.
    fn retry_request(&self, r: &Retry<'_>) -> Option<GatewayRequest> {
        let mut form = vec![("off_session".to_owned(), "true".to_owned())];
        if !r.payment_method.is_empty() {
            form.insert(0, ("payment_method".into(), r.payment_method.to_owned()));
        }
        Some(GatewayRequest {
            method: "POST",
            path: format!("/v1/payment_intents/{}/confirm", r.payment_ref),
            idempotency_key: format!("tally-{}-retry-{}", r.invoice_id, r.step),
            form,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, object: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "evt_1", "object": "event", "type": kind, "created": 1_700_000_000,
            "data": {"object": object}
        }))
        .unwrap()
    }

    #[test]
    fn a_signed_succeeded_event_decodes_to_a_payment() {
        let s = Stripe::new("whsec_x", 300);
        let body = event(
            "payment_intent.succeeded",
            serde_json::json!({"id": "pi_1", "object": "payment_intent", "amount": 1250,
                "amount_received": 1250, "currency": "usd", "metadata": {"invoice_id": "inv_1"}}),
        );
        let h = signature::header(&Secret::new("whsec_x"), 1_700_000_000, &body);
        let e = s.decode(Some(&h), &body, 1_700_000_010).unwrap();
        assert_eq!(
            e.effect,
            Some(Effect::PaymentSucceeded {
                payment_ref: "pi_1".into(),
                invoice_id: "inv_1".into(),
                amount_minor: 1250,
                currency: "USD".into(),
                payment_method: String::new(),
            })
        );
        assert!(matches!(
            s.decode(Some(&h), &body, 1_700_000_400),
            Err(GatewayError::Signature(_))
        ));
    }

    #[test]
    fn refunds_decode_from_refund_created_and_old_style_charge_refunded() {
        let s = Stripe::new("whsec_x", 300);
        let decode = |kind: &str, object: serde_json::Value| {
            let body = event(kind, object);
            let h = signature::header(&Secret::new("whsec_x"), 1_700_000_000, &body);
            s.decode(Some(&h), &body, 1_700_000_000).unwrap().effect
        };
        let expected = Some(Effect::Refunded {
            refund_ref: "re_1".into(),
            payment_ref: "pi_1".into(),
            amount_minor: 300,
            currency: "USD".into(),
        });
        let refund = serde_json::json!({"id": "re_1", "object": "refund", "amount": 300,
            "currency": "usd", "payment_intent": "pi_1", "status": "succeeded"});
        assert_eq!(decode("refund.created", refund), expected);
        let old = serde_json::json!({"id": "ch_1", "currency": "usd", "payment_intent": "pi_1",
            "refunds": {"data": [{"id": "re_1", "amount": 300}]}});
        assert_eq!(decode("charge.refunded", old), expected);
        let new = serde_json::json!({"id": "ch_1", "currency": "usd", "payment_intent": "pi_1",
            "amount_refunded": 300});
        assert_eq!(
            decode("charge.refunded", new),
            None,
            "acknowledged, booked by refund.created"
        );
        let failed = serde_json::json!({"id": "re_2", "amount": 300, "currency": "usd",
            "payment_intent": "pi_1", "status": "failed"});
        assert_eq!(decode("refund.created", failed), None);
    }

    #[test]
    fn dispute_events_decode_to_their_change() {
        let s = Stripe::new("whsec_x", 300);
        let decode = |kind: &str, status: &str| {
            let object = serde_json::json!({"id": "dp_1", "object": "dispute", "amount": 700,
                "currency": "usd", "charge": "ch_1", "payment_intent": "pi_1",
                "status": status, "reason": "fraudulent"});
            let body = event(kind, object);
            let h = signature::header(&Secret::new("whsec_x"), 1_700_000_000, &body);
            s.decode(Some(&h), &body, 1_700_000_000).unwrap().effect
        };
        let disputed = |change| {
            Some(Effect::Disputed {
                dispute_ref: "dp_1".into(),
                payment_ref: "pi_1".into(),
                amount_minor: 700,
                currency: "USD".into(),
                reason: "fraudulent".into(),
                change,
            })
        };
        assert_eq!(
            decode("charge.dispute.created", "needs_response"),
            disputed(DisputeChange::Opened {
                status: "needs_response".into()
            })
        );
        assert_eq!(
            decode("charge.dispute.funds_withdrawn", "needs_response"),
            disputed(DisputeChange::FundsWithdrawn)
        );
        assert_eq!(
            decode("charge.dispute.closed", "lost"),
            disputed(DisputeChange::Closed {
                status: "lost".into()
            })
        );
        let body = event(
            "charge.dispute.created",
            serde_json::json!({"id": "dp_2", "amount": 1, "currency": "usd", "charge": "ch_2"}),
        );
        let h = signature::header(&Secret::new("whsec_x"), 1_700_000_000, &body);
        assert!(matches!(
            s.decode(Some(&h), &body, 1_700_000_000),
            Err(GatewayError::Payload(e)) if e.contains("dp_2: no payment_intent")
        ));
    }

    #[test]
    fn a_retry_confirms_the_failed_payment_intent_with_its_card() {
        let s = Stripe::new("whsec_x", 300);
        let r = s
            .retry_request(&Retry {
                invoice_id: "inv_1",
                payment_ref: "pi_9",
                payment_method: "pm_1",
                step: 1,
            })
            .unwrap();
        assert_eq!(r.path, "/v1/payment_intents/pi_9/confirm");
        assert_eq!(r.idempotency_key, "tally-inv_1-retry-1");
        assert_eq!(r.body(), "payment_method=pm_1&off_session=true");
    }

    #[test]
    fn payment_intent_requests_have_stripes_shape() {
        let s = Stripe::new("whsec_x", 300);
        let r = s
            .collect_request(&Collect {
                invoice_id: "inv_1",
                customer: &tally_domain::CustomerId::new("acme".to_owned()).unwrap(),
                amount_minor: 995,
                currency: "EUR".parse().unwrap(),
                attempt: 2,
                provider_customer: "cus_1",
                payment_method: "pm_1",
            })
            .unwrap();
        assert_eq!(r.path, "/v1/payment_intents");
        assert_eq!(r.idempotency_key, "tally-inv_1-2");
        assert!(r.body().starts_with(
            "amount=995&currency=eur&customer=cus_1&payment_method=pm_1&confirm=true&off_session=true"
        ));
        assert!(r.body().contains("metadata%5Binvoice_id%5D=inv_1"));
        assert!(r
            .body()
            .ends_with("metadata%5Bcustomer%5D=acme&metadata%5Battempt%5D=2"));
    }
}
