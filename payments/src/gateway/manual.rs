//! The manual adapter: bank transfers (and any payment made outside a provider) recorded
//! through the payments API by an authenticated operator, whose token's actor is recorded
//! with the payment. The request names the invoice, the amount and the bank reference; the
//! reference is the idempotency key, so recording the same transfer twice changes nothing.
//! It never accepts a payment without a reference, a positive amount and a known currency.

use serde::Deserialize;

use super::{Collect, Effect, Gateway, GatewayError, GatewayEvent, GatewayRequest, Retry};

/// The adapter (no secret of its own: the API's bearer tokens guard it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Manual;

/// `POST /v1/payments` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualPayment {
    pub invoice_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The bank's or operator's reference of the transfer; unique per payment.
    pub reference: String,
}

fn field_ok(name: &str, value: &str) -> Result<(), GatewayError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::Payload(format!(
            "{name}: {value:?} must be 1 to 128 of [A-Za-z0-9-_.:/]"
        )))
    }
}

impl Manual {
    /// Validates the request into an event (`manual:<reference>`) at `now_secs`.
    pub fn decode(&self, body: &[u8], now_secs: i64) -> Result<GatewayEvent, GatewayError> {
        let p: ManualPayment =
            serde_json::from_slice(body).map_err(|e| GatewayError::Payload(e.to_string()))?;
        field_ok("reference", &p.reference)?;
        field_ok("invoice_id", &p.invoice_id)?;
        if p.amount_minor <= 0 {
            return Err(GatewayError::Payload(format!(
                "amount_minor: {} must be positive",
                p.amount_minor
            )));
        }
        let currency = p.currency.to_ascii_uppercase();
        currency
            .parse::<tally_domain::Currency>()
            .map_err(|e| GatewayError::Payload(format!("currency: {e}")))?;
        let event = GatewayEvent {
            event_id: format!("manual:{}", p.reference),
            event_type: "manual.payment".into(),
            created_secs: now_secs,
            effect: Some(Effect::PaymentSucceeded {
                payment_ref: p.reference,
                invoice_id: p.invoice_id,
                amount_minor: p.amount_minor,
                currency,
                payment_method: String::new(),
            }),
        };
        Ok(event)
    }
}

impl Gateway for Manual {
    fn name(&self) -> &'static str {
        "manual"
    }

    /// None: the customer pays by transfer quoting the invoice id.
    fn collect_request(&self, _c: &Collect<'_>) -> Option<GatewayRequest> {
        None
    }

    /// None: a transfer is not retried by request; dunning reminds the customer.
    fn retry_request(&self, _r: &Retry<'_>) -> Option<GatewayRequest> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_becomes_a_payment_event_keyed_by_its_reference() {
        let body =
            br#"{"invoice_id":"inv_1","amount_minor":500,"currency":"jpy","reference":"BANK-77"}"#;
        let e = Manual.decode(body, 10).unwrap();
        assert_eq!(e.event_id, "manual:BANK-77");
        assert!(
            matches!(e.effect, Some(Effect::PaymentSucceeded { amount_minor: 500, ref currency, .. }) if currency == "JPY")
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let body = br#"{"invoice_id":"inv_1","amount_minor":0,"currency":"USD","reference":"r"}"#;
        assert!(Manual
            .decode(body, 0)
            .unwrap_err()
            .to_string()
            .contains("amount_minor"));
        let body = br#"{"invoice_id":"inv_1","amount_minor":1,"currency":"XXX","reference":"r"}"#;
        assert!(Manual
            .decode(body, 0)
            .unwrap_err()
            .to_string()
            .contains("currency"));
        // the actor is the token's: a body cannot name one
        let body = br#"{"invoice_id":"inv_1","amount_minor":1,"currency":"USD","reference":"r","recorded_by":"stripe"}"#;
        assert!(Manual
            .decode(body, 0)
            .unwrap_err()
            .to_string()
            .contains("recorded_by"));
    }
}
