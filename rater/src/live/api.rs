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
//! - `GET /v1/openapi.json`: the OpenAPI document of these routes ([`ROUTES`], [`OPENAPI`]),
//!   without a token.
//!
//! Every other route needs `Authorization: Bearer <token>` (`tally_platform::auth`): reads any
//! role with `read`, changes `edit_catalog`; changes are audited. Agents ask through the
//! gateway with their API key instead (`POST /v1/authorize`, `GET /v1/balance`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Extension;
use clickhouse::Client;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use tally_domain::CustomerId;
use tally_platform::auth::{Authenticator, Permission, Principal};
use tally_platform::http::{
    self, error, fail, json, Body, ErrorCode, ListenerLimits, RawBody, Router,
};
use tally_platform::openapi::Route;
use tally_platform::shutdown::Shutdown;
use tokio::net::TcpListener;

use super::budget::{self, Budget, Kind};
use crate::api::shared::{parse, secured, unavailable, CustomerPath};

/// What the API answers from.
pub struct SpendApi {
    pub db: Client,
    pub nats: async_nats::Client,
    /// `spend.subject_root`.
    pub subject_root: String,
    pub auth: Arc<Authenticator>,
    pub now_ms: fn() -> i64,
}

/// Serves [`router`] until `shutdown` (bounded connections, header timeout, graceful
/// shutdown).
pub async fn serve(listener: TcpListener, state: Arc<SpendApi>, shutdown: Shutdown) {
    http::serve_router(
        "spend",
        listener,
        router(state),
        ListenerLimits::default(),
        shutdown,
    )
    .await;
}

/// The API's axum router, built from [`ROUTES`] (`crate::api::shared::secured`, as the
/// rater's API: 404/405 in the shared shape, bodies within 1 MiB, every request but the
/// OpenAPI document authenticated first, the 401/403 of an unknown path included, as before;
/// changes need `edit_catalog` and are audited). The customer of every route is checked (400
/// `invalid_customer`) before anything else is read.
pub fn router(state: Arc<SpendApi>) -> Router {
    let auth = state.auth.clone();
    let writes = |_: &str| Permission::EditCatalog;
    secured(http::route_table(ROUTES, handler), state, auth, writes)
}

type Shared = State<Arc<SpendApi>>;

/// What a route's method answers.
fn handler(op: Op, method: MethodFilter) -> MethodRouter<Arc<SpendApi>> {
    type Who = Extension<Principal>;
    type Ids = Path<(String, String)>;
    match op {
        Op::ListBudgets => on(
            method,
            |State(s): Shared, CustomerPath(c): CustomerPath| async move { list(&s, &c).await },
        ),
        Op::PutBudget => on(
            method,
            |State(s): Shared,
             CustomerPath(c): CustomerPath,
             Path((_, id)): Ids,
             Extension(who): Who,
             RawBody(body): RawBody| async move {
                put(&s, &body, &c, id, &who.actor_label()).await
            },
        ),
        Op::DeleteBudget => on(
            method,
            |State(s): Shared,
             CustomerPath(c): CustomerPath,
             Path((_, id)): Ids,
             Extension(who): Who| async move {
                remove(&s, &c, &id, &who.actor_label()).await
            },
        ),
        Op::Balance => on(
            method,
            |State(s): Shared, CustomerPath(c): CustomerPath| async move { balance(&s, &c).await },
        ),
        Op::OpenApi => on(method, || async { openapi_reply() }),
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ListBudgets,
    PutBudget,
    DeleteBudget,
    Balance,
    OpenApi,
}

/// Every route: [`router`] answers only these, and the test checks them against
/// [`OPENAPI`] both ways.
pub const ROUTES: &[Route<Op>] = &[
    Route::new("GET", "/v1/customers/{id}/budgets", Op::ListBudgets),
    Route::new(
        "PUT",
        "/v1/customers/{id}/budgets/{budget_id}",
        Op::PutBudget,
    ),
    Route::new(
        "DELETE",
        "/v1/customers/{id}/budgets/{budget_id}",
        Op::DeleteBudget,
    ),
    Route::new("GET", "/v1/customers/{id}/balance", Op::Balance),
    Route::new("GET", "/v1/openapi.json", Op::OpenApi),
];

/// The OpenAPI 3.0 document of this API, served at `/v1/openapi.json` without a token.
pub const OPENAPI: &str = include_str!("openapi.json");

fn openapi_reply() -> Response<Body> {
    http::bytes(
        StatusCode::OK,
        "application/json",
        OPENAPI.as_bytes().to_vec(),
    )
}

async fn list(state: &SpendApi, customer: &CustomerId) -> Response<Body> {
    match budget::load_customer(&state.db, customer.as_str()).await {
        Ok(b) => json(StatusCode::OK, &b),
        Err(e) => unavailable(e),
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
    body: &[u8],
    customer: &CustomerId,
    budget_id: String,
    actor: &str,
) -> Response<Body> {
    let body: BudgetBody = match parse(body, "invalid_budget") {
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
        Err(e) => unavailable(e),
    }
}

async fn remove(state: &SpendApi, customer: &CustomerId, id: &str, actor: &str) -> Response<Body> {
    let existing = match budget::load_customer(&state.db, customer.as_str()).await {
        Ok(b) => b,
        Err(e) => return unavailable(e),
    };
    let Some(b) = existing.into_iter().find(|b| b.budget_id == id) else {
        return fail(ErrorCode::NotFound, format!("no budget {id:?}"));
    };
    match budget::put(&state.db, &b, true, actor, (state.now_ms)()).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({"deleted": id})),
        Err(e) => unavailable(e),
    }
}

async fn balance(state: &SpendApi, customer: &CustomerId) -> Response<Body> {
    let subject = format!("{}.balance.{customer}", state.subject_root);
    let asked = state.nats.request(subject, bytes::Bytes::new());
    let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(2), asked).await else {
        return unavailable("no spend decider answered");
    };
    match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
        Ok(v) if v.get("error").is_some() => error(
            StatusCode::NOT_FOUND,
            "unknown_customer",
            "the customer has no plan in force",
        ),
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::super::book::{EntitlementUse, LimitUse};
    use super::super::decider::{Balance, BudgetBalance, MeterBalance};
    use super::*;
    use tally_platform::openapi;

    fn doc() -> serde_json::Value {
        serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON")
    }

    /// A balance with every part present, as the decider serializes it.
    fn example_balance() -> Balance {
        let d = |t: &str| t.parse::<rust_decimal::Decimal>().unwrap();
        let mb = MeterBalance {
            quantity: d("12"),
            amount: d("0.24"),
        };
        Balance {
            customer: "acme".into(),
            period_start: "2026-12-01T00:00:00Z".into(),
            period_end: "2027-01-01T00:00:00Z".into(),
            currency: Some("USD".into()),
            spend: d("0.24"),
            meters: [("tool_calls".to_owned(), mb.clone())].into(),
            agents: [("bot".to_owned(), [("tool_calls".to_owned(), mb)].into())].into(),
            holds: 1,
            held_amount: d("0.02"),
            budgets: vec![BudgetBalance {
                budget_id: "monthly".into(),
                agent: None,
                meter: Some("tool_calls".into()),
                kind: Kind::Amount,
                limit: d("0.50"),
                spent: d("0.24"),
                held: d("0.02"),
                remaining: d("0.24"),
                hard: true,
            }],
            entitlements: EntitlementUse {
                plan: Some("pro".into()),
                features: vec!["web_search".into()],
                limits: vec![LimitUse {
                    meter: "tokens".into(),
                    group: [("model".to_owned(), "gpt-4o".to_owned())].into(),
                    limit: d("1000"),
                    used: d("10"),
                    held: d("5"),
                    remaining: d("985"),
                }],
            },
        }
    }

    #[test]
    fn every_route_is_described_and_every_description_served() {
        assert_eq!(openapi::check_routes(ROUTES, &doc()), Vec::<String>::new());
    }

    #[test]
    fn the_budget_and_balance_shapes_fit_the_document() {
        let d = doc();
        let b: BudgetBody = serde_json::from_str(
            r#"{"agent":"bot","kind":"quantity","meter":"calls","limit":"5","thresholds":[50],"hard":true}"#,
        )
        .unwrap();
        let stored = Budget {
            customer: "acme".into(),
            budget_id: "calls".into(),
            agent: b.agent,
            meter: b.meter,
            kind: b.kind,
            limit: b.limit,
            thresholds: b.thresholds,
            hard: b.hard,
        };
        let path = "/v1/customers/acme/budgets/calls";
        let value = serde_json::to_value(&stored).unwrap();
        assert_eq!(
            openapi::check_response(&d, "PUT", path, 200, &value),
            Ok(())
        );
        let list = serde_json::json!([value]);
        let list_path = "/v1/customers/acme/budgets";
        assert_eq!(
            openapi::check_response(&d, "GET", list_path, 200, &list),
            Ok(())
        );
        let input = serde_json::json!({"kind": "amount", "limit": "0.50", "thresholds": [80]});
        assert_eq!(openapi::check_request(&d, "PUT", path, &input), Ok(()));
        let balance = example_balance();
        let value = serde_json::to_value(&balance).unwrap();
        let balance_path = "/v1/customers/acme/balance";
        assert_eq!(
            openapi::check_response(&d, "GET", balance_path, 200, &value),
            Ok(())
        );
    }
}
