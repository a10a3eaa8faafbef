//! The spend service's HTTP API (`spend.api_addr`), JSON, for operators and billing teams:
//!
//! - `GET /v1/customers/{id}/budgets`: the customer's budgets in force.
//! - `PUT /v1/customers/{id}/budgets/{budget_id}`: creates or changes a budget (`{"agent",
//!   "meter", "kind": "amount"|"quantity", "limit", "thresholds", "hard"}`); a top-up is a
//!   higher limit. The deciders load it within `spend.refresh_secs`.
//! - `DELETE /v1/customers/{id}/budgets/{budget_id}`.
//! - `GET /v1/customers/{id}/balance`: the live balance (spend of the period by meter and
//!   agent, holds, budgets and what is left), asked of the customer's decider over NATS.
//!
//! Every route needs `Authorization: Bearer <token>` (`tally_platform::auth`): reads any
//! role with `read`, changes `edit_catalog`; changes are audited. Agents ask through the
//! gateway with their API key instead (`POST /v1/authorize`, `GET /v1/balance`).

use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tally_domain::CustomerId;
use tally_platform::auth::{hook, Authenticator, Permission};
use tally_platform::http::{error, json, Body};
use tally_platform::shutdown::Shutdown;
use tokio::net::TcpListener;

use super::budget::{self, Budget, Kind};

/// What the API answers from.
pub struct SpendApi {
    pub db: Client,
    pub nats: async_nats::Client,
    /// `spend.subject_root`.
    pub subject_root: String,
    pub auth: Arc<Authenticator>,
    pub now_ms: fn() -> i64,
}

/// Serves until `shutdown` (bounded connections, header timeout, graceful shutdown).
pub async fn serve(listener: TcpListener, state: Arc<SpendApi>, shutdown: Shutdown) {
    let handler = move |req| {
        let state = state.clone();
        async move { route(&state, req).await }
    };
    tally_platform::http::serve(listener, handler, shutdown).await;
}

async fn route(state: &SpendApi, req: Request<Incoming>) -> Response<Body> {
    let who = match hook::authorize(&state.auth, &req, Permission::EditCatalog).await {
        Ok(who) => who,
        Err(refused) => return refused,
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let actor = who.actor_label();
    hook::audited(
        &state.auth,
        &who,
        &method,
        &path,
        dispatch(state, req, actor),
    )
    .await
}

async fn dispatch(state: &SpendApi, req: Request<Incoming>, actor: String) -> Response<Body> {
    let segments = tally_platform::http::segments(req.uri());
    let path: Vec<&str> = segments.iter().map(String::as_str).collect();
    let customer = match path.as_slice() {
        ["v1", "customers", c, ..] => match CustomerId::new((*c).to_owned()) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_customer", e),
        },
        _ => return error(StatusCode::NOT_FOUND, "not_found", req.uri().path()),
    };
    match (req.method(), &path[3..]) {
        (&Method::GET, ["budgets"]) => list(state, &customer).await,
        (&Method::PUT, ["budgets", id]) => {
            let id = (*id).to_owned();
            put(state, req, &customer, id, &actor).await
        }
        (&Method::DELETE, ["budgets", id]) => remove(state, &customer, id, &actor).await,
        (&Method::GET, ["balance"]) => balance(state, &customer).await,
        (_, ["budgets"] | ["budgets", _] | ["balance"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            req.method(),
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", req.uri().path()),
    }
}

async fn list(state: &SpendApi, customer: &CustomerId) -> Response<Body> {
    match budget::load_customer(&state.db, customer.as_str()).await {
        Ok(b) => json(StatusCode::OK, &b),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

/// A budget as a PUT carries it (the customer and id are the path's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    meter: Option<String>,
    kind: Kind,
    #[serde(with = "rust_decimal::serde::str")]
    limit: rust_decimal::Decimal,
    #[serde(default)]
    thresholds: Vec<u8>,
    #[serde(default)]
    hard: bool,
}

async fn put(
    state: &SpendApi,
    req: Request<Incoming>,
    customer: &CustomerId,
    budget_id: String,
    actor: &str,
) -> Response<Body> {
    let body: BudgetBody = match crate::api::read_json(req, "invalid_budget").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let budget = Budget {
        customer: customer.to_string(),
        budget_id,
        agent: body.agent,
        meter: body.meter,
        kind: body.kind,
        limit: body.limit,
        thresholds: body.thresholds,
        hard: body.hard,
    };
    let budget = match budget.validated() {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_budget", e),
    };
    match budget::put(&state.db, &budget, false, actor, (state.now_ms)()).await {
        Ok(()) => json(StatusCode::OK, &budget),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

async fn remove(state: &SpendApi, customer: &CustomerId, id: &str, actor: &str) -> Response<Body> {
    let existing = match budget::load_customer(&state.db, customer.as_str()).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    let Some(b) = existing.into_iter().find(|b| b.budget_id == id) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no budget {id:?}"),
        );
    };
    match budget::put(&state.db, &b, true, actor, (state.now_ms)()).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({"deleted": id})),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

async fn balance(state: &SpendApi, customer: &CustomerId) -> Response<Body> {
    let subject = format!("{}.balance.{customer}", state.subject_root);
    let asked = state.nats.request(subject, bytes::Bytes::new());
    let msg = match tokio::time::timeout(Duration::from_secs(2), asked).await {
        Ok(Ok(m)) => m,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "no spend decider answered",
            )
        }
    };
    match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
        Ok(v) if v.get("error").is_some() => error(
            StatusCode::NOT_FOUND,
            "unknown_customer",
            "the customer has no plan in force",
        ),
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(StatusCode::BAD_GATEWAY, "unavailable", e),
    }
}
