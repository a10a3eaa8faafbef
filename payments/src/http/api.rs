//! The operator API, behind `Authorization: Bearer <payments.api_token>` (compared in
//! constant time): record a manual payment (bank transfer), refund a manual payment, write an
//! invoice off, read an invoice's payments and ledger lines, the trial balance, the delivery
//! log, and issue portal links. Every change names its actor (`api:<recorded_by>`).

// Handlers return `Err(response)` for early answers: one per request, never stored.
#![allow(clippy::result_large_err)]

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ring::hmac;
use serde::Deserialize;

use super::routes::AppState;
use super::server::{self, Body};
use crate::gateway::manual::Manual;
use crate::gateway::Gateway;
use crate::portal::link;
use crate::{profiles, store, Error};

fn authorized(state: &AppState, req: &Request<Incoming>) -> bool {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // compare MACs of both under a fresh key: constant time whatever the lengths
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"tally-payments-api-token-compare");
    let expected = hmac::sign(&key, state.api_token.expose().as_bytes());
    !state.api_token.is_empty() && hmac::verify(&key, given.as_bytes(), expected.as_ref()).is_ok()
}

fn failed(e: Error) -> Response<Body> {
    match e {
        Error::NotFound(what) => server::error(StatusCode::NOT_FOUND, "not_found", what),
        Error::Lifecycle(e) => server::error(StatusCode::CONFLICT, "lifecycle", e),
        Error::Ledger(e) => server::error(StatusCode::UNPROCESSABLE_ENTITY, "ledger", e),
        e => {
            tracing::error!(error = %e, "payments api failed");
            server::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "see the service log",
            )
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response<Body>> {
    serde_json::from_slice(body)
        .map_err(|e| server::error(StatusCode::BAD_REQUEST, "bad_request", e))
}

/// Routes `/v1/<segments>`.
pub async fn route(state: &AppState, req: Request<Incoming>, segments: &[&str]) -> Response<Body> {
    if !authorized(state, &req) {
        tracing::warn!(path = %req.uri().path(), "payments api: missing or wrong token");
        return server::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        );
    }
    let method = req.method().clone();
    let body = match server::body(req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let result = match (method, segments) {
        (Method::POST, ["payments"]) => manual_payment(state, &body).await,
        (Method::POST, ["refunds"]) => refund(state, &body).await,
        (Method::POST, ["invoices", id, "write-off"]) => write_off(state, id, &body).await,
        (Method::GET, ["invoices", id]) => invoice(state, id).await,
        (Method::GET, ["ledger", "trial-balance"]) => trial_balance(state).await,
        (Method::GET, ["customers", c, "notifications"]) => {
            Ok(super::routes::deliveries(state, c).await)
        }
        (Method::POST, ["portal-links"]) => portal_link(state, &body),
        (Method::PUT, ["customers", c, "payment-profile"]) => set_profile(state, c, &body).await,
        (Method::GET, ["customers", c, "payment-profile"]) => get_profile(state, c).await,
        _ => Err(server::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such API route",
        )),
    };
    result.unwrap_or_else(|r| r)
}

type Answer = Result<Response<Body>, Response<Body>>;

async fn manual_payment(state: &AppState, body: &[u8]) -> Answer {
    let now_ms = (state.now_ms)();
    let (event, actor) = Manual
        .decode(body, now_ms.div_euclid(1000))
        .map_err(|e| server::error(StatusCode::BAD_REQUEST, "bad_request", e))?;
    let payload = String::from_utf8_lossy(body);
    let applied = state
        .settler
        .apply(Manual.name(), &actor, &event, &payload, now_ms)
        .await
        .map_err(failed)?;
    Ok(server::json(StatusCode::OK, &applied))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRequest {
    /// The reference the manual payment was recorded with.
    payment_reference: String,
    amount_minor: i64,
    /// Unique reference of this refund.
    reference: String,
    recorded_by: String,
}

async fn refund(state: &AppState, body: &[u8]) -> Answer {
    let r: RefundRequest = parse(body)?;
    let db = &state.settler.db;
    let paid = store::payment_by_ref(db, "manual", &r.payment_reference)
        .await
        .map_err(|e| failed(e.into()))?
        .ok_or_else(|| {
            server::error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("payment_reference {:?}", r.payment_reference),
            )
        })?;
    let now_ms = (state.now_ms)();
    let row = store::PaymentRow {
        payment_id: format!("manual:refund:{}", r.reference),
        gateway_ref: r.reference.clone(),
        kind: "refund".into(),
        status: "refunded".into(),
        amount_minor: r.amount_minor,
        event_id: format!("manual:refund:{}", r.reference),
        actor: format!("api:{}", r.recorded_by),
        at_ms: now_ms,
        at: tally_platform::store::datetime_secs(now_ms),
        ..paid
    };
    let (outcome, invoice_id) = state.settler.refund_locked(row).await.map_err(failed)?;
    let status = if outcome == "refunded" {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok(server::json(
        status,
        &serde_json::json!({"outcome": outcome, "invoice_id": invoice_id}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteOff {
    recorded_by: String,
    reason: String,
}

async fn write_off(state: &AppState, id: &str, body: &[u8]) -> Answer {
    let w: WriteOff = parse(body)?;
    let actor = format!("api:{}", w.recorded_by);
    let minor = state
        .settler
        .write_off(id, &actor, &w.reason, (state.now_ms)())
        .await
        .map_err(failed)?;
    Ok(server::json(
        StatusCode::OK,
        &serde_json::json!({"invoice_id": id, "written_off_minor": minor}),
    ))
}

async fn invoice(state: &AppState, id: &str) -> Answer {
    let db = &state.settler.db;
    let facts = store::invoice(db, id)
        .await
        .map_err(|e| failed(e.into()))?
        .ok_or_else(|| {
            server::error(StatusCode::NOT_FOUND, "not_found", format!("invoice {id}"))
        })?;
    let history = tally_invoicer::lifecycle::history(db, id)
        .await
        .map_err(|e| failed(e.into()))?;
    let payments = store::payments_of(db, id)
        .await
        .map_err(|e| failed(e.into()))?;
    let ledger = store::entries_of(db, id)
        .await
        .map_err(|e| failed(e.into()))?;
    Ok(server::json(
        StatusCode::OK,
        &serde_json::json!({
            "invoice": facts,
            "status": tally_invoicer::lifecycle::status_of(&history),
            "transitions": history,
            "payments": payments,
            "ledger": ledger,
        }),
    ))
}

async fn trial_balance(state: &AppState) -> Answer {
    let tb = store::trial_balance(&state.settler.db)
        .await
        .map_err(failed)?;
    let differences: std::collections::BTreeMap<&String, String> = tb
        .currencies
        .keys()
        .map(|c| (c, tb.difference_minor(c).to_string()))
        .collect();
    Ok(server::json(
        StatusCode::OK,
        &serde_json::json!({"balanced": tb.is_balanced(), "difference_minor": differences, "accounts": tb.currencies}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    customer: String,
}

fn portal_link(state: &AppState, body: &[u8]) -> Answer {
    let r: LinkRequest = parse(body)?;
    let secret = state.portal_secret.as_ref().ok_or_else(|| {
        server::error(
            StatusCode::NOT_FOUND,
            "portal_off",
            "the portal feature is off",
        )
    })?;
    let expires = (state.now_ms)().div_euclid(1000) + state.portal.link_ttl_secs;
    let token = link::token(secret, &r.customer, expires).ok_or_else(|| {
        server::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "customer: must be [A-Za-z0-9_-]{1,64}",
        )
    })?;
    tracing::info!(customer = %r.customer, expires, "portal link issued");
    Ok(server::json(
        StatusCode::OK,
        &serde_json::json!({
            "url": format!("{}/portal/{token}", state.portal.base_url.trim_end_matches('/')),
            "expires_at": expires,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileRequest {
    /// `stripe` or `manual`.
    gateway: String,
    #[serde(default)]
    provider_customer: String,
    #[serde(default)]
    payment_method: String,
    recorded_by: String,
}

/// Records how `customer` pays from now on (append-only; the latest record is in force).
async fn set_profile(state: &AppState, customer: &str, body: &[u8]) -> Answer {
    let r: ProfileRequest = parse(body)?;
    if r.recorded_by.trim().is_empty() {
        return Err(server::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "recorded_by is required",
        ));
    }
    let p = profiles::Profile {
        customer: customer.to_owned(),
        gateway: r.gateway,
        provider_customer: r.provider_customer,
        payment_method: r.payment_method,
        actor: format!("api:{}", r.recorded_by),
        at_ms: (state.now_ms)(),
    };
    p.validate()
        .map_err(|e| server::error(StatusCode::BAD_REQUEST, "bad_request", e))?;
    profiles::append(&state.settler.db, &p)
        .await
        .map_err(|e| failed(e.into()))?;
    tracing::info!(customer, gateway = %p.gateway, actor = %p.actor, at_ms = p.at_ms,
        "payment profile recorded");
    Ok(server::json(StatusCode::OK, &p))
}

async fn get_profile(state: &AppState, customer: &str) -> Answer {
    match profiles::of(&state.settler.db, customer).await {
        Ok(Some(p)) => Ok(server::json(StatusCode::OK, &p)),
        Ok(None) => Err(server::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no payment profile for {customer}"),
        )),
        Err(e) => Err(failed(e.into())),
    }
}
