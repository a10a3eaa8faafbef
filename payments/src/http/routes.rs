//! Routing (the table [`ROUTES`], checked against the OpenAPI document [`OPENAPI`] both ways),
//! and the Stripe webhook endpoint. A webhook is verified (signature, tolerance)
//! before its payload is read; a refused one is answered 400 and logged without the secret
//! or the signature. Processing errors are 500 so the gateway delivers again (processing is
//! idempotent). It never stores or acts on a webhook whose signature did not verify.

use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use tally_platform::auth::Authenticator;
use tally_platform::http::ErrorCode;
use tally_platform::openapi::{self, Route};

use super::server::{self, Body};
use crate::config::PortalConfig;
use crate::gateway::stripe::Stripe;
use crate::gateway::{Gateway, GatewayError};
use crate::settle::Settler;
use crate::signature::Secret;
use crate::{dunning, metrics};

/// What every request is served from.
pub struct AppState {
    pub settler: Settler,
    pub stripe: Stripe,
    /// Who may call the `/v1` API (the tokens of every Tally API).
    pub auth: std::sync::Arc<Authenticator>,
    /// `None` when the portal feature is off.
    pub portal_secret: Option<Secret>,
    pub portal: PortalConfig,
    /// Where the portal asks for live spend; `None`: the page shows none.
    pub portal_live: Option<crate::portal::live::LiveSpend>,
    pub now_ms: fn() -> i64,
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    OpenApi,
    StripeWebhook,
    /// The operator API ([`super::api`]), behind API tokens.
    Api(ApiOp),
    /// The customer portal ([`super::portal`]), behind a signed link.
    Portal(PortalOp),
}

/// An operator API route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiOp {
    ManualPayment,
    Refund,
    WriteOff,
    Invoice,
    TrialBalance,
    Revenue,
    Notifications,
    PortalLink,
    SetProfile,
    GetProfile,
    Wallet,
    Grant,
    TopUp,
    VoidGrant,
}

/// A portal route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalOp {
    Page,
    InvoicePdf,
    InvoiceHtml,
}

/// Every route: [`route`] answers only these (404/405 otherwise), and a test checks them
/// against [`OPENAPI`] both ways. The `.pdf` portal route comes before the bare one.
pub const ROUTES: &[Route<Op>] = &[
    Route::new("GET", "/healthz", Op::Health),
    Route::new("GET", "/v1/openapi.json", Op::OpenApi),
    Route::new("POST", "/webhooks/stripe", Op::StripeWebhook),
    Route::new("POST", "/v1/payments", Op::Api(ApiOp::ManualPayment)),
    Route::new("POST", "/v1/refunds", Op::Api(ApiOp::Refund)),
    Route::new(
        "POST",
        "/v1/invoices/{id}/write-off",
        Op::Api(ApiOp::WriteOff),
    ),
    Route::new("GET", "/v1/invoices/{id}", Op::Api(ApiOp::Invoice)),
    Route::new(
        "GET",
        "/v1/ledger/trial-balance",
        Op::Api(ApiOp::TrialBalance),
    ),
    Route::new("GET", "/v1/reports/revenue", Op::Api(ApiOp::Revenue)),
    Route::new(
        "GET",
        "/v1/customers/{customer}/notifications",
        Op::Api(ApiOp::Notifications),
    ),
    Route::new("POST", "/v1/portal-links", Op::Api(ApiOp::PortalLink)),
    Route::new(
        "PUT",
        "/v1/customers/{customer}/payment-profile",
        Op::Api(ApiOp::SetProfile),
    ),
    Route::new(
        "GET",
        "/v1/customers/{customer}/payment-profile",
        Op::Api(ApiOp::GetProfile),
    ),
    Route::new(
        "GET",
        "/v1/customers/{customer}/wallet",
        Op::Api(ApiOp::Wallet),
    ),
    Route::new(
        "POST",
        "/v1/customers/{customer}/wallet/grants",
        Op::Api(ApiOp::Grant),
    ),
    Route::new(
        "POST",
        "/v1/customers/{customer}/wallet/top-ups",
        Op::Api(ApiOp::TopUp),
    ),
    Route::new(
        "POST",
        "/v1/customers/{customer}/wallet/grants/{grant_id}/void",
        Op::Api(ApiOp::VoidGrant),
    ),
    Route::new("GET", "/portal/{token}", Op::Portal(PortalOp::Page)),
    Route::new(
        "GET",
        "/portal/{token}/invoices/{id}.pdf",
        Op::Portal(PortalOp::InvoicePdf),
    ),
    Route::new(
        "GET",
        "/portal/{token}/invoices/{id}",
        Op::Portal(PortalOp::InvoiceHtml),
    ),
];

/// The OpenAPI 3.0 document of this service, served at `/v1/openapi.json` without a token.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Answers one request.
pub async fn route(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (group, response) = match openapi::resolve(ROUTES, &req) {
        Err(answer) => ("other", answer),
        Ok((Op::Health, _)) => (
            "health",
            server::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        ),
        Ok((Op::OpenApi, _)) => (
            "api",
            server::with_type(StatusCode::OK, "application/json", OPENAPI.into()),
        ),
        Ok((Op::StripeWebhook, _)) => ("webhook", stripe_webhook(state, req).await),
        Ok((Op::Api(op), params)) => ("api", super::api::route(state, req, op, &params).await),
        Ok((Op::Portal(op), params)) => ("portal", super::portal::route(state, op, &params).await),
    };
    metrics::request(group, response.status().as_u16(), started.elapsed());
    response
}

async fn stripe_webhook(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let (head, body) = req.into_parts();
    let body = match server::body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let signature = head
        .headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now_ms = (state.now_ms)();
    let event = match state
        .stripe
        .decode(signature, &body, now_ms.div_euclid(1000))
    {
        Ok(e) => e,
        Err(e) => {
            let (reason, code) = match &e {
                GatewayError::Signature(_) => ("signature", "bad_signature"),
                GatewayError::Payload(_) => ("payload", "bad_payload"),
            };
            metrics::webhook_refused(reason);
            tracing::warn!(gateway = "stripe", error = %e, bytes = body.len(), "webhook refused");
            return server::error(StatusCode::BAD_REQUEST, code, e);
        }
    };
    let payload = String::from_utf8_lossy(&body);
    match state
        .settler
        .apply(
            state.stripe.name(),
            &state.stripe.actor(),
            &event,
            &payload,
            now_ms,
        )
        .await
    {
        Ok(applied) => server::json(StatusCode::OK, &applied),
        Err(crate::Error::Invalid(why)) => {
            metrics::webhook_refused("amount");
            tracing::warn!(gateway = "stripe", event_id = %event.event_id, %why, "webhook refused");
            server::error(StatusCode::BAD_REQUEST, "invalid_amount", why)
        }
        Err(e) => {
            tracing::error!(gateway = "stripe", event_id = %event.event_id, error = %e, "webhook processing failed");
            server::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "processing_failed",
                "try again",
            )
        }
    }
}

/// Delivery log of a customer's notifications (the API's view of dunning).
pub async fn deliveries(state: &AppState, customer: &str) -> Response<Body> {
    match dunning::log::deliveries_of(&state.settler.db, customer).await {
        Ok(d) => server::json(StatusCode::OK, &d),
        Err(e) => server::fail(ErrorCode::Unavailable, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        assert_eq!(openapi::check_routes(ROUTES, &doc), Vec::<String>::new());
    }
}
