//! The rater's HTTP API, version 1, JSON: the stored catalog (plan versions, a customer's
//! subscriptions, read per request), adding a plan version, and the explanation of one
//! charge. Customers, agents and meters are served by [`crate::api::registry`]. The OpenAPI
//! document is served at `/v1/openapi.json`.
//!
//! Routes: `GET /v1/plans`, `POST /v1/plans` (a new plan version, validated against the
//! stored catalog and appended; an identical re-post is 200, a changed existing version 409),
//! `POST /v1/subscriptions` (likewise; identity: customer and `effective_from`),
//! `POST /v1/subscriptions/cancel` (appends a `cancelled` record, now or at a given instant,
//! or at the end of the period containing it),
//! `GET /v1/plans/{id}`, `GET /v1/customers/{id}/subscriptions`,
//! `GET /v1/charges/{charge_id}/explain`, `GET /v1/openapi.json`; and (in
//! [`crate::api::registry`]) `GET`/`POST /v1/customers`, `GET /v1/customers/{id}`,
//! `GET`/`POST /v1/customers/{id}/agents`, `GET`/`POST /v1/meters`, `GET /v1/meters/{slug}`;
//! (in [`crate::api::corrections`]) `POST /v1/corrections`, `GET /v1/customers/{id}/corrections`;
//! (in [`crate::api::backfill`]) `POST /v1/backfill`;
//! (in [`crate::api::query`]) `GET /v1/meters/{slug}/query`, a customer's usage per window and
//! group; and (in [`crate::api::rates`]) `GET`/`POST /v1/tax_rates`, `GET`/`POST /v1/fx_rates`.
//!
//! [`ROUTES`] lists every route; a request matching none is 404 (405 for another method of a
//! listed path), and a test checks the table against [`OPENAPI`] both ways.
//!
//! Every route but the OpenAPI document needs `Authorization: Bearer <token>`
//! ([`tally_platform::auth`]): reads any role with `read`, changes `edit_catalog`
//! (`catalog_editor` or `admin`); 401/403 otherwise. Every change is recorded with its actor
//! in `api_audit` before it is made.

pub mod backfill;
mod catalog;
pub mod corrections;
mod explain;
pub mod query;
pub mod rates;
pub mod registry;
pub(crate) mod shared;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tally_platform::auth::{hook, Permission};
use tally_platform::openapi::{self, Route};
use tally_platform::shutdown::Shutdown;
use tokio::net::TcpListener;

use shared::{error, json};

pub use shared::{ApiState, BODY_BYTES_MAX};

/// Serves until `shutdown` (the shared server of `tally_platform::http`: bounded
/// connections, header timeout, graceful shutdown).
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, shutdown: Shutdown) {
    let handler = move |req| {
        let state = state.clone();
        async move { route(&state, req).await }
    };
    tally_platform::http::serve(listener, handler, shutdown).await;
}

/// What a change through `path` needs: corrections and backfills change what customers are
/// billed (the invoicer turns them into credit notes and adjustments), so they are invoice
/// operations, not catalog edits; every other change edits the catalog.
fn writes(path: &str) -> Permission {
    if path.starts_with("/v1/corrections") || path.starts_with("/v1/backfill") {
        Permission::OperateInvoices
    } else {
        Permission::EditCatalog
    }
}

/// Authenticates, then routes; changes are audited.
async fn route(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::GET && req.uri().path() == "/v1/openapi.json" {
        return openapi_reply();
    }
    let who = match hook::authorize(&state.auth, &req, writes(req.uri().path())).await {
        Ok(who) => who,
        Err(refused) => return refused,
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    hook::audited(
        &state.auth,
        &who,
        &method,
        &path,
        dispatch(state, req, &who),
    )
    .await
}

/// What a route does: the routes of this module, or the module that answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The catalog's reads (plans, a plan's versions, a customer's subscriptions).
    Catalog,
    AddPlan,
    AddSubscription,
    CancelSubscription,
    Explain,
    /// [`crate::api::corrections`]: void an event.
    Correct,
    /// [`crate::api::corrections`]: a customer's corrections.
    Corrections,
    /// [`crate::api::backfill`]: import historical events.
    Backfill,
    /// [`crate::api::registry`].
    Registry,
    /// [`crate::api::query`].
    Query,
    /// [`crate::api::rates`].
    Rates,
    OpenApi,
}

/// Every route: [`dispatch`] answers only these, and the test checks them against
/// [`OPENAPI`] both ways.
pub const ROUTES: &[Route<Op>] = &[
    Route::new("GET", "/v1/plans", Op::Catalog),
    Route::new("POST", "/v1/plans", Op::AddPlan),
    Route::new("GET", "/v1/plans/{id}", Op::Catalog),
    Route::new("POST", "/v1/subscriptions", Op::AddSubscription),
    Route::new("POST", "/v1/subscriptions/cancel", Op::CancelSubscription),
    Route::new("GET", "/v1/customers/{id}/subscriptions", Op::Catalog),
    Route::new("GET", "/v1/charges/{charge_id}/explain", Op::Explain),
    Route::new("POST", "/v1/corrections", Op::Correct),
    Route::new("GET", "/v1/customers/{id}/corrections", Op::Corrections),
    Route::new("POST", "/v1/backfill", Op::Backfill),
    Route::new("GET", "/v1/customers", Op::Registry),
    Route::new("POST", "/v1/customers", Op::Registry),
    Route::new("GET", "/v1/customers/{id}", Op::Registry),
    Route::new("GET", "/v1/customers/{id}/agents", Op::Registry),
    Route::new("POST", "/v1/customers/{id}/agents", Op::Registry),
    Route::new("GET", "/v1/meters", Op::Registry),
    Route::new("POST", "/v1/meters", Op::Registry),
    Route::new("GET", "/v1/meters/{slug}", Op::Registry),
    Route::new("GET", "/v1/meters/{slug}/query", Op::Query),
    Route::new("GET", "/v1/tax_rates", Op::Rates),
    Route::new("POST", "/v1/tax_rates", Op::Rates),
    Route::new("GET", "/v1/fx_rates", Op::Rates),
    Route::new("POST", "/v1/fx_rates", Op::Rates),
    Route::new("GET", "/v1/openapi.json", Op::OpenApi),
];

async fn dispatch(
    state: &ApiState,
    req: Request<Incoming>,
    who: &tally_platform::auth::Principal,
) -> Response<Full<Bytes>> {
    let path = tally_platform::http::segments(req.uri());
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let (op, params) = match openapi::resolve(ROUTES, &req) {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    match op {
        Op::AddPlan => catalog::add_plan(state, req).await,
        Op::AddSubscription => catalog::add_subscription(state, req).await,
        Op::CancelSubscription => catalog::cancel_subscription(state, req).await,
        Op::Query => crate::api::query::route(state, req, &path).await,
        Op::Registry => crate::api::registry::route(state, req, &path).await,
        Op::Rates => crate::api::rates::route(state, req, &path).await,
        Op::Explain => explain::explain_charge(state, &params[0]).await,
        Op::Correct => crate::api::corrections::post(state, req, who).await,
        Op::Corrections => {
            crate::api::corrections::list(state, &params[0], req.uri().query()).await
        }
        Op::Backfill => crate::api::backfill::post(state, req, who).await,
        Op::Catalog => match state.source.current(&state.db).await {
            Ok(catalog) => catalog::route(&catalog, &path),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        },
        Op::OpenApi => openapi_reply(),
    }
}

fn openapi_reply() -> Response<Full<Bytes>> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap_or(serde_json::Value::Null);
    json(StatusCode::OK, &doc)
}

/// The OpenAPI 3.0 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        assert_eq!(openapi::check_routes(ROUTES, &doc), Vec::<String>::new());
    }
}
