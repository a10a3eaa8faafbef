//! Routing, and the Stripe webhook endpoint. A webhook is verified (signature, tolerance)
//! before its payload is read; a refused one is answered 400 and logged without the secret
//! or the signature. Processing errors are 500 so the gateway delivers again (processing is
//! idempotent). It never stores or acts on a webhook whose signature did not verify.

use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use tally_platform::auth::Authenticator;

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

/// Answers one request.
pub async fn route(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, response) = match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["healthz"]) => (
            "health",
            server::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        ),
        (Method::POST, ["webhooks", "stripe"]) => ("webhook", stripe_webhook(state, req).await),
        (_, ["v1", ..]) => ("api", super::api::route(state, req, &segments[1..]).await),
        (Method::GET, ["portal", rest @ ..]) => ("portal", super::portal::route(state, rest).await),
        _ => (
            "other",
            server::error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {path}"),
            ),
        ),
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
        Err(e) => server::error(StatusCode::INTERNAL_SERVER_ERROR, "store", e),
    }
}
