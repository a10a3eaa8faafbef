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
//! [`ROUTES`] lists every route and [`router`] is built from it (the shared axum server of
//! `tally_platform::http`): a request matching none is 404 `not_found` (405
//! `method_not_allowed` for another method of a listed path), and a test checks the table
//! against [`OPENAPI`] both ways. Bodies are read within [`BODY_BYTES_MAX`] (413
//! `body_too_large`).
//!
//! Every route but the OpenAPI document needs `Authorization: Bearer <token>`
//! ([`tally_platform::auth`]): reads any role with `read`, changes `edit_catalog`
//! (`catalog_editor` or `admin`); 401/403 otherwise, for an unknown path too (the token is
//! checked before the route is looked up). Every change is recorded with its actor in
//! `api_audit` before it is made.

pub mod backfill;
mod catalog;
pub mod corrections;
mod explain;
pub mod query;
pub mod rates;
pub mod registry;
pub(crate) mod shared;

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Extension;
use hyper::StatusCode;
use tally_platform::auth::{Permission, Principal};
use tally_platform::http::{self, ListenerLimits, RawBody, Router};
use tally_platform::openapi::Route;
use tally_platform::shutdown::Shutdown;
use tokio::net::TcpListener;

use shared::{json, CustomerPath, Reply};

pub use shared::{ApiState, BODY_BYTES_MAX};

/// Serves [`router`] until `shutdown` (the shared server of `tally_platform::http`: bounded
/// connections, header timeout, graceful shutdown).
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, shutdown: Shutdown) {
    http::serve_router(
        "rater",
        listener,
        router(state),
        ListenerLimits::default(),
        shutdown,
    )
    .await;
}

/// The API's axum router, built from [`ROUTES`] (`shared::secured`: 404/405 in the shared
/// shape, bodies within [`BODY_BYTES_MAX`], every request but the OpenAPI document
/// authenticated first, the 401/403 of an unknown path included, as before; corrections and
/// backfills need `operate_invoices`, other changes `edit_catalog`, and are audited).
pub fn router(state: Arc<ApiState>) -> Router {
    let auth = state.auth.clone();
    shared::secured(http::route_table(ROUTES, handler), state, auth, writes)
}

type Shared = State<Arc<ApiState>>;

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

/// What a route's method answers. Bodies are read by the shared [`RawBody`] (within the
/// router's limit) after the token was checked; a path's `{id}` is a customer for
/// [`CustomerPath`], which refuses a bad one before the body is read.
fn handler(op: Op, method: MethodFilter) -> MethodRouter<Arc<ApiState>> {
    type Id = Path<String>;
    type Who = Extension<Principal>;
    match op {
        Op::Plans => on(method, |State(s): Shared| async move {
            catalog::read(&s, catalog::plans).await
        }),
        Op::Plan => on(method, |State(s): Shared, Path(id): Id| async move {
            catalog::read(&s, |c| catalog::plan(c, &id)).await
        }),
        Op::Subscriptions => on(method, |State(s): Shared, Path(id): Id| async move {
            catalog::read(&s, |c| catalog::subscriptions(c, &id)).await
        }),
        Op::AddPlan => on(method, |State(s): Shared, RawBody(b): RawBody| async move {
            catalog::add_plan(&s, &b).await
        }),
        Op::AddSubscription => on(method, |State(s): Shared, RawBody(b): RawBody| async move {
            catalog::add_subscription(&s, &b).await
        }),
        Op::CancelSubscription => on(method, |State(s): Shared, RawBody(b): RawBody| async move {
            catalog::cancel_subscription(&s, &b).await
        }),
        Op::Explain => on(method, |State(s): Shared, Path(id): Id| async move {
            explain::explain_charge(&s, &id).await
        }),
        Op::Correct => on(
            method,
            |State(s): Shared, Extension(who): Who, RawBody(b): RawBody| async move {
                corrections::post(&s, &b, &who).await
            },
        ),
        Op::Corrections => on(
            method,
            |State(s): Shared, Path(id): Id, RawQuery(q): RawQuery| async move {
                corrections::list(&s, &id, q.as_deref()).await
            },
        ),
        Op::Backfill => on(
            method,
            |State(s): Shared, Extension(who): Who, RawBody(b): RawBody| async move {
                backfill::post(&s, &b, &who).await
            },
        ),
        Op::Registry(op) => registry_handler(op, method),
        Op::Query => on(
            method,
            |State(s): Shared, Path(slug): Id, RawQuery(q): RawQuery| async move {
                query::answer(&s, &slug, q.as_deref()).await
            },
        ),
        Op::TaxRates => on(method, |State(s): Shared| async move {
            rates::list(&s, false).await
        }),
        Op::FxRates => on(method, |State(s): Shared| async move {
            rates::list(&s, true).await
        }),
        Op::AddTaxRate => on(method, |State(s): Shared, RawBody(b): RawBody| async move {
            rates::post_tax_rate(&s, &b).await
        }),
        Op::AddFxRate => on(method, |State(s): Shared, RawBody(b): RawBody| async move {
            rates::post_fx_rate(&s, &b).await
        }),
        Op::OpenApi => on(method, || async { openapi_reply() }),
    }
}

/// What a route of [`crate::api::registry`] answers.
fn registry_handler(op: RegistryOp, method: MethodFilter) -> MethodRouter<Arc<ApiState>> {
    type Id = Path<String>;
    match op {
        RegistryOp::Customers => on(method, |State(s): Shared| async move {
            registry::read(&s, registry::customers).await
        }),
        RegistryOp::Customer => on(method, |State(s): Shared, Path(id): Id| async move {
            registry::read(&s, |r| registry::customer(r, &id)).await
        }),
        RegistryOp::Agents => on(method, |State(s): Shared, Path(id): Id| async move {
            registry::read(&s, |r| registry::agents(r, &id)).await
        }),
        RegistryOp::Meters => on(method, |State(s): Shared| async move {
            registry::read(&s, registry::meters).await
        }),
        RegistryOp::Meter => on(method, |State(s): Shared, Path(slug): Id| async move {
            registry::read(&s, |r| registry::meter(r, &slug)).await
        }),
        RegistryOp::AddCustomer => on(method, |State(s): Shared, RawBody(b): RawBody| async move {
            registry::post_customer(&s, &b).await
        }),
        RegistryOp::AddAgent => on(
            method,
            |State(s): Shared, CustomerPath(customer): CustomerPath, RawBody(b): RawBody| async move {
                registry::post_agent(&s, &customer, &b).await
            },
        ),
        RegistryOp::AddMeter => on(method, |State(s): Shared, RawBody(b): RawBody| async move {
            registry::post_meter(&s, &b).await
        }),
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The catalog's reads: every plan, a plan's versions, a customer's subscriptions.
    Plans,
    Plan,
    Subscriptions,
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
    Registry(RegistryOp),
    /// [`crate::api::query`].
    Query,
    /// [`crate::api::rates`].
    TaxRates,
    AddTaxRate,
    FxRates,
    AddFxRate,
    OpenApi,
}

/// What a route of [`crate::api::registry`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryOp {
    Customers,
    AddCustomer,
    Customer,
    Agents,
    AddAgent,
    Meters,
    AddMeter,
    Meter,
}

/// Every route: [`router`] answers only these, and the test checks them against
/// [`OPENAPI`] both ways.
pub const ROUTES: &[Route<Op>] = &[
    Route::new("GET", "/v1/plans", Op::Plans),
    Route::new("POST", "/v1/plans", Op::AddPlan),
    Route::new("GET", "/v1/plans/{id}", Op::Plan),
    Route::new("POST", "/v1/subscriptions", Op::AddSubscription),
    Route::new("POST", "/v1/subscriptions/cancel", Op::CancelSubscription),
    Route::new("GET", "/v1/customers/{id}/subscriptions", Op::Subscriptions),
    Route::new("GET", "/v1/charges/{charge_id}/explain", Op::Explain),
    Route::new("POST", "/v1/corrections", Op::Correct),
    Route::new("GET", "/v1/customers/{id}/corrections", Op::Corrections),
    Route::new("POST", "/v1/backfill", Op::Backfill),
    Route::new("GET", "/v1/customers", Op::Registry(RegistryOp::Customers)),
    Route::new(
        "POST",
        "/v1/customers",
        Op::Registry(RegistryOp::AddCustomer),
    ),
    Route::new(
        "GET",
        "/v1/customers/{id}",
        Op::Registry(RegistryOp::Customer),
    ),
    Route::new(
        "GET",
        "/v1/customers/{id}/agents",
        Op::Registry(RegistryOp::Agents),
    ),
    Route::new(
        "POST",
        "/v1/customers/{id}/agents",
        Op::Registry(RegistryOp::AddAgent),
    ),
    Route::new("GET", "/v1/meters", Op::Registry(RegistryOp::Meters)),
    Route::new("POST", "/v1/meters", Op::Registry(RegistryOp::AddMeter)),
    Route::new("GET", "/v1/meters/{slug}", Op::Registry(RegistryOp::Meter)),
    Route::new("GET", "/v1/meters/{slug}/query", Op::Query),
    Route::new("GET", "/v1/tax_rates", Op::TaxRates),
    Route::new("POST", "/v1/tax_rates", Op::AddTaxRate),
    Route::new("GET", "/v1/fx_rates", Op::FxRates),
    Route::new("POST", "/v1/fx_rates", Op::AddFxRate),
    Route::new("GET", "/v1/openapi.json", Op::OpenApi),
];

fn openapi_reply() -> Reply {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap_or(serde_json::Value::Null);
    json(StatusCode::OK, &doc)
}

/// The OpenAPI 3.0 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;
    use tally_platform::openapi;

    #[test]
    fn every_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        assert_eq!(openapi::check_routes(ROUTES, &doc), Vec::<String>::new());
    }
}
