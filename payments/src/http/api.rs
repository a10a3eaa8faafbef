//! The operator API: record a manual payment (bank transfer), refund a manual payment, write
//! an invoice off, read an invoice's payments and ledger lines, the trial balance, the
//! delivery log, and issue portal links. Authenticated like every Tally API
//! ([`tally_platform::auth`]): reads need a role with `read`, changes `operate_payments`
//! (`payments_operator` or `admin`). Every change names its actor, the token's
//! (`api:<actor>`), and is recorded in `api_audit` before it is made; a body cannot name one.

// Handlers return `Err(response)` for early answers: one per request, never stored.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::middleware::{self, Next};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Extension;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use tally_platform::auth::{hook, Permission, Principal};
use tally_platform::http::RawBody;

use super::routes::{ApiOp, AppState};
use super::server::{self, Body};
use crate::gateway::manual::Manual;
use crate::gateway::Gateway;
use crate::portal::link;
use crate::settle::{Outcome, Source};
use crate::{profiles, store, wallet, Error};

fn failed(e: Error) -> Response<Body> {
    match e {
        Error::NotFound(what) => server::error(StatusCode::NOT_FOUND, "not_found", what),
        Error::Lifecycle(e) => server::error(StatusCode::CONFLICT, "lifecycle", e),
        Error::Ledger(e) => server::error(StatusCode::UNPROCESSABLE_ENTITY, "ledger", e),
        Error::Invalid(e) => server::error(StatusCode::BAD_REQUEST, "bad_request", e),
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

type Shared = State<Arc<AppState>>;
type Who = Extension<Principal>;
type Id = Path<String>;

/// What an operator API route's method answers, behind [`guard`]: the token is checked (and a
/// change audited) before the body is read. Path parameters are the invoice or the customer
/// (and a grant's id).
pub fn handler(
    state: &Arc<AppState>,
    op: ApiOp,
    method: MethodFilter,
) -> MethodRouter<Arc<AppState>> {
    let route = match op {
        ApiOp::ManualPayment => on(method, on_manual_payment),
        ApiOp::Refund => on(method, on_refund),
        ApiOp::WriteOff => on(method, on_write_off),
        ApiOp::Invoice => on(method, on_invoice),
        ApiOp::TrialBalance => on(method, on_trial_balance),
        ApiOp::Revenue => on(method, on_revenue),
        ApiOp::Notifications => on(method, on_notifications),
        ApiOp::PortalLink => on(method, on_portal_link),
        ApiOp::SetProfile => on(method, on_set_profile),
        ApiOp::GetProfile => on(method, on_get_profile),
        ApiOp::Wallet => on(method, on_wallet),
        ApiOp::Grant => grant_route(method, wallet::GrantKind::Promotional),
        ApiOp::TopUp => grant_route(method, wallet::GrantKind::TopUp),
        ApiOp::VoidGrant => on(method, on_void_grant),
    };
    route.layer(middleware::from_fn_with_state(state.clone(), guard))
}

// The routes' extractors, in the order axum runs them (the body last), each handing its
// parameters to the operation below.

fn answer(a: Answer) -> Response<Body> {
    a.unwrap_or_else(|r| r)
}

async fn on_manual_payment(
    State(s): Shared,
    Extension(who): Who,
    RawBody(body): RawBody,
) -> Response<Body> {
    answer(manual_payment(&s, &body, &who.actor_label()).await)
}

async fn on_refund(
    State(s): Shared,
    Extension(who): Who,
    RawBody(body): RawBody,
) -> Response<Body> {
    answer(refund(&s, &body, &who.actor_label()).await)
}

async fn on_write_off(
    State(s): Shared,
    Path(id): Id,
    Extension(who): Who,
    RawBody(body): RawBody,
) -> Response<Body> {
    answer(write_off(&s, &id, &body, &who.actor_label()).await)
}

async fn on_invoice(State(s): Shared, Path(id): Id) -> Response<Body> {
    answer(invoice(&s, &id).await)
}

async fn on_trial_balance(State(s): Shared) -> Response<Body> {
    answer(trial_balance(&s).await)
}

async fn on_revenue(State(s): Shared, RawQuery(query): RawQuery) -> Response<Body> {
    answer(revenue(&s, &query.unwrap_or_default()).await)
}

async fn on_notifications(State(s): Shared, Path(customer): Id) -> Response<Body> {
    super::routes::deliveries(&s, &customer).await
}

async fn on_portal_link(
    State(s): Shared,
    Extension(who): Who,
    RawBody(body): RawBody,
) -> Response<Body> {
    answer(portal_link(&s, &body, &who.actor_label()))
}

async fn on_set_profile(
    State(s): Shared,
    Path(customer): Id,
    Extension(who): Who,
    RawBody(body): RawBody,
) -> Response<Body> {
    answer(set_profile(&s, &customer, &body, &who.actor_label()).await)
}

async fn on_get_profile(State(s): Shared, Path(customer): Id) -> Response<Body> {
    answer(get_profile(&s, &customer).await)
}

async fn on_wallet(State(s): Shared, Path(customer): Id) -> Response<Body> {
    answer(wallet::http::get(&s.settler.db, &customer).await)
}

/// Creating a grant of `kind`: a promotional grant or a top-up.
fn grant_route(method: MethodFilter, kind: wallet::GrantKind) -> MethodRouter<Arc<AppState>> {
    on(
        method,
        move |State(s): Shared, Path(customer): Id, Extension(who): Who, RawBody(body): RawBody| async move {
            let (db, actor, now_ms) = (&s.settler.db, who.actor_label(), (s.now_ms)());
            answer(wallet::http::create(db, &customer, kind, &body, &actor, now_ms).await)
        },
    )
}

async fn on_void_grant(
    State(s): Shared,
    Path((customer, grant_id)): Path<(String, String)>,
    Extension(who): Who,
) -> Response<Body> {
    let (db, actor, now_ms) = (&s.settler.db, who.actor_label(), (s.now_ms)());
    answer(wallet::http::void(db, &customer, &grant_id, &actor, now_ms).await)
}

/// Authenticates (reads need `read`, changes `operate_payments`) and audits changes.
async fn guard(
    State(state): Shared,
    req: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    hook::guard(&state.auth, Permission::OperatePayments, req, next).await
}

type Answer = Result<Response<Body>, Response<Body>>;

async fn manual_payment(state: &AppState, body: &[u8], actor: &str) -> Answer {
    let now_ms = (state.now_ms)();
    let event = Manual
        .decode(body, now_ms.div_euclid(1000))
        .map_err(|e| server::error(StatusCode::BAD_REQUEST, "bad_request", e))?;
    let payload = String::from_utf8_lossy(body);
    let applied = state
        .settler
        .apply(Manual.name(), actor, &event, &payload, now_ms)
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
}

async fn refund(state: &AppState, body: &[u8], actor: &str) -> Answer {
    let r: RefundRequest = parse(body)?;
    if r.amount_minor <= 0 {
        return Err(server::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "amount_minor: must be positive",
        ));
    }
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
    let refund_id = format!("manual:refund:{}", r.reference);
    let by = Source {
        gateway: "manual",
        actor,
        event_id: &refund_id,
        at_ms: (state.now_ms)(),
    };
    let row = by.refund_of(paid, refund_id.clone(), &r.reference, r.amount_minor);
    let (outcome, invoice_id) = state.settler.refund_locked(row).await.map_err(failed)?;
    let status = if outcome == Outcome::Refunded {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let outcome = outcome.to_string();
    Ok(server::json(
        status,
        &serde_json::json!({"outcome": outcome, "invoice_id": invoice_id}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteOff {
    reason: String,
}

async fn write_off(state: &AppState, id: &str, body: &[u8], actor: &str) -> Answer {
    let w: WriteOff = parse(body)?;
    let minor = state
        .settler
        .write_off(id, actor, &w.reason, (state.now_ms)())
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
    let history = tally_invoice::lifecycle::history(db, id)
        .await
        .map_err(|e| failed(e.into()))?;
    let payments = store::payments_of(db, id)
        .await
        .map_err(|e| failed(e.into()))?;
    let ledger = store::entries_of(db, id)
        .await
        .map_err(|e| failed(e.into()))?;
    let disputes = crate::disputes::of_invoice(db, id).await.map_err(failed)?;
    Ok(server::json(
        StatusCode::OK,
        &serde_json::json!({
            "invoice": facts,
            "status": tally_invoice::lifecycle::status_of(&history),
            "transitions": history,
            "payments": payments,
            "ledger": ledger,
            "disputes": crate::disputes::views(disputes),
        }),
    ))
}

async fn revenue(state: &AppState, query: &str) -> Answer {
    let q = crate::revenue::from_query_string(query).map_err(|e| match e {
        // a range longer than the cap has its own code
        Error::Invalid(m) if m.starts_with(crate::revenue::RANGE_TOO_LONG) => {
            server::error(StatusCode::BAD_REQUEST, crate::revenue::RANGE_TOO_LONG, m)
        }
        e => failed(e),
    })?;
    let r = crate::revenue::run(&state.settler.db, &q)
        .await
        .map_err(failed)?;
    Ok(server::json(StatusCode::OK, &r))
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

fn portal_link(state: &AppState, body: &[u8], actor: &str) -> Answer {
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
    tracing::info!(customer = %r.customer, expires, actor, "portal link issued");
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
}

/// Records how `customer` pays from now on (append-only; the latest record is in force).
async fn set_profile(state: &AppState, customer: &str, body: &[u8], actor: &str) -> Answer {
    let r: ProfileRequest = parse(body)?;
    let p = profiles::Profile {
        customer: customer.to_owned(),
        gateway: r.gateway,
        provider_customer: r.provider_customer,
        payment_method: r.payment_method,
        actor: actor.to_owned(),
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
