//! The operator API: record a manual payment (bank transfer), refund a manual payment, write
//! an invoice off, read an invoice's payments and ledger lines, the trial balance, the
//! delivery log, and issue portal links. Authenticated like every Tally API
//! ([`tally_platform::auth`]): reads need a role with `read`, changes `operate_payments`
//! (`payments_operator` or `admin`). Every change names its actor, the token's
//! (`api:<actor>`), and is recorded in `api_audit` before it is made; a body cannot name one.

// Handlers return `Err(response)` for early answers: one per request, never stored.
#![allow(clippy::result_large_err)]

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use tally_platform::auth::{hook, Permission, Principal};

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

/// Answers an operator API route: authenticates, then answers; changes are audited.
/// `params` are the route's path parameters, in pattern order.
pub async fn route(
    state: &AppState,
    req: Request<Incoming>,
    op: ApiOp,
    params: &[String],
) -> Response<Body> {
    let who = match hook::authorize(&state.auth, &req, Permission::OperatePayments).await {
        Ok(who) => who,
        Err(refused) => return refused,
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let answer = dispatch(state, req, op, params, &who);
    hook::audited(&state.auth, &who, &method, &path, answer).await
}

async fn dispatch(
    state: &AppState,
    req: Request<Incoming>,
    op: ApiOp,
    params: &[String],
    who: &Principal,
) -> Response<Body> {
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = match server::body(req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let actor = who.actor_label();
    let db = &state.settler.db;
    let now_ms = (state.now_ms)();
    // the first path parameter: the invoice or the customer
    let p0 = params.first().map(String::as_str).unwrap_or_default();
    let result = match op {
        ApiOp::ManualPayment => manual_payment(state, &body, &actor).await,
        ApiOp::Refund => refund(state, &body, &actor).await,
        ApiOp::WriteOff => write_off(state, p0, &body, &actor).await,
        ApiOp::Invoice => invoice(state, p0).await,
        ApiOp::TrialBalance => trial_balance(state).await,
        ApiOp::Revenue => revenue(state, &query).await,
        ApiOp::Notifications => Ok(super::routes::deliveries(state, p0).await),
        ApiOp::PortalLink => portal_link(state, &body, &actor),
        ApiOp::SetProfile => set_profile(state, p0, &body, &actor).await,
        ApiOp::GetProfile => get_profile(state, p0).await,
        ApiOp::Wallet => wallet::http::get(db, p0).await,
        ApiOp::Grant => {
            let kind = wallet::GrantKind::Promotional;
            wallet::http::create(db, p0, kind, &body, &actor, now_ms).await
        }
        ApiOp::TopUp => {
            let kind = wallet::GrantKind::TopUp;
            wallet::http::create(db, p0, kind, &body, &actor, now_ms).await
        }
        ApiOp::VoidGrant => wallet::http::void(db, p0, &params[1], &actor, now_ms).await,
    };
    result.unwrap_or_else(|r| r)
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
