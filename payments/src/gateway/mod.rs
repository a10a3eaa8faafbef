//! The payment gateway abstraction: every adapter turns what its provider sends into the same
//! [`GatewayEvent`], and builds the request that collects an invoice. What an event does to
//! invoices, payments and the ledger is decided once, in [`crate::settle`], whatever the
//! adapter.
//!
//! Adapters: [`stripe`] (Stripe's PaymentIntent request shapes; webhooks verified by the
//! `Stripe-Signature` scheme) and [`manual`] (bank transfers and other payments recorded
//! through the API). This module never trusts an unverified payload.

pub mod manual;
pub mod stripe;

use serde::Serialize;
use tally_domain::{Currency, CustomerId};

/// What an accepted event means for an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Money received against an invoice.
    PaymentSucceeded {
        /// The provider's id of the payment (Stripe: the PaymentIntent id).
        payment_ref: String,
        invoice_id: String,
        amount_minor: i64,
        currency: String,
        /// The provider's payment method, empty when unknown.
        payment_method: String,
    },
    /// A payment attempt failed; the invoice stays open and dunning retries it.
    PaymentFailed {
        payment_ref: String,
        invoice_id: String,
        amount_minor: i64,
        currency: String,
        reason: String,
        /// The payment method that failed (a retry confirms it again), empty when unknown.
        payment_method: String,
    },
    /// Money returned for a payment (the invoice is found from the payment's reference).
    Refunded {
        refund_ref: String,
        payment_ref: String,
        amount_minor: i64,
        currency: String,
    },
    /// A payment is disputed by the card holder (Stripe `charge.dispute.*`); what it does is
    /// decided by [`crate::disputes::decide`].
    Disputed {
        /// The provider's id of the dispute (Stripe: `dp_...`).
        dispute_ref: String,
        /// The disputed payment (Stripe: the PaymentIntent id).
        payment_ref: String,
        amount_minor: i64,
        currency: String,
        /// The provider's reason (`fraudulent`, `product_not_received`, ...).
        reason: String,
        change: DisputeChange,
    },
}

/// What a dispute event says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum DisputeChange {
    /// Opened with the provider's status (`needs_response`; `warning_needs_response` for an
    /// inquiry, which withdraws nothing).
    Opened { status: String },
    /// The provider withdrew the disputed amount from the balance.
    FundsWithdrawn,
    /// The provider returned the withdrawn amount.
    FundsReinstated,
    /// Closed with the provider's final status (`won`, `lost`, `warning_closed`).
    Closed { status: String },
}

/// One verified inbound event, in the gateway's own id space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEvent {
    /// Unique per gateway: a second delivery of the same id changes nothing.
    pub event_id: String,
    pub event_type: String,
    /// When the provider created it (unix seconds).
    pub created_secs: i64,
    /// `None`: a type this service does not act on (accepted, logged, ignored).
    pub effect: Option<Effect>,
}

/// An inbound payload that is refused.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("signature: {0}")]
    Signature(#[from] crate::signature::SignatureError),
    #[error("payload: {0}")]
    Payload(String),
}

/// A request to the provider, in its documented shape (form-encoded, as Stripe takes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayRequest {
    pub method: &'static str,
    pub path: String,
    /// Sent as the `Idempotency-Key` header: retrying the same request never charges twice.
    pub idempotency_key: String,
    pub form: Vec<(String, String)>,
}

impl GatewayRequest {
    /// The `application/x-www-form-urlencoded` body.
    pub fn body(&self) -> String {
        self.form
            .iter()
            .map(|(k, v)| format!("{}={}", form_escape(k), form_escape(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An open invoice to collect: its customer and currency as validated with the invoice (a
/// provider is sent their strings, as before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collect<'a> {
    pub invoice_id: &'a str,
    pub customer: &'a CustomerId,
    pub amount_minor: i64,
    pub currency: Currency,
    /// 0 for the first attempt, then the dunning retry step.
    pub attempt: u32,
    /// The provider's customer (Stripe: `cus_...`), empty when unknown.
    pub provider_customer: &'a str,
    /// The customer's saved payment method (Stripe: `pm_...`), empty when unknown.
    pub payment_method: &'a str,
}

/// A failed payment to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry<'a> {
    pub invoice_id: &'a str,
    /// The provider's id of the failed payment (Stripe: the PaymentIntent).
    pub payment_ref: &'a str,
    /// The payment method that failed, empty when unknown.
    pub payment_method: &'a str,
    /// The dunning retry step (0 for the first retry).
    pub step: u32,
}

/// A payment provider.
pub trait Gateway: Send + Sync {
    /// The stored name (`payments.gateway`) and the actor suffix (`payments:<name>`).
    fn name(&self) -> &'static str;

    /// The request that collects `c`, if this provider is asked by request (a bank transfer
    /// is not: the customer sends money and it is recorded through the API).
    fn collect_request(&self, c: &Collect<'_>) -> Option<GatewayRequest>;

    /// The request that tries a failed payment again, if this provider retries by request.
    fn retry_request(&self, r: &Retry<'_>) -> Option<GatewayRequest>;

    /// Who the ledger and the lifecycle name as the cause of this gateway's changes.
    fn actor(&self) -> String {
        format!("payments:{}", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_escape_brackets_and_spaces() {
        let r = GatewayRequest {
            method: "POST",
            path: "/v1/x".into(),
            idempotency_key: "k".into(),
            form: vec![
                ("metadata[invoice_id]".into(), "inv 1".into()),
                ("amount".into(), "100".into()),
            ],
        };
        assert_eq!(r.body(), "metadata%5Binvoice_id%5D=inv+1&amount=100");
    }
}
