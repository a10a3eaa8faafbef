//! The rater's HTTP API, version 1, JSON: the stored catalog (plan versions, a customer's
//! subscriptions, read per request), adding a plan version, and the explanation of one
//! charge. Customers, agents and meters are served by [`crate::api_registry`]. The OpenAPI
//! document is served at `/v1/openapi.json`.
//!
//! Routes: `GET /v1/plans`, `POST /v1/plans` (a new plan version, validated against the
//! stored catalog and appended; an identical re-post is 200, a changed existing version 409),
//! `POST /v1/subscriptions` (likewise; identity: customer and `effective_from`),
//! `POST /v1/subscriptions/cancel` (appends a `cancelled` record, now or at a given instant,
//! or at the end of the period containing it),
//! `GET /v1/plans/{id}`, `GET /v1/customers/{id}/subscriptions`,
//! `GET /v1/charges/{charge_id}/explain`, `GET /v1/openapi.json`; and (in
//! [`crate::api_registry`]) `GET`/`POST /v1/customers`, `GET /v1/customers/{id}`,
//! `GET`/`POST /v1/customers/{id}/agents`, `GET`/`POST /v1/meters`, `GET /v1/meters/{slug}`;
//! (in [`crate::api_corrections`]) `POST /v1/corrections`, `GET /v1/customers/{id}/corrections`;
//! (in [`crate::api_backfill`]) `POST /v1/backfill`;
//! (in [`crate::api_query`]) `GET /v1/meters/{slug}/query`, a customer's usage per window and
//! group; and (in [`crate::api_rates`]) `GET`/`POST /v1/tax_rates`, `GET`/`POST /v1/fx_rates`.
//!
//! [`ROUTES`] lists every route; a request matching none is 404 (405 for another method of a
//! listed path), and a test checks the table against [`OPENAPI`] both ways.
//!
//! Every route but the OpenAPI document needs `Authorization: Bearer <token>`
//! ([`tally_platform::auth`]): reads any role with `read`, changes `edit_catalog`
//! (`catalog_editor` or `admin`); 401/403 otherwise. Every change is recorded with its actor
//! in `api_audit` before it is made.

use std::sync::Arc;

use bytes::Bytes;
use clickhouse::Client;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tally_domain::CustomerId;
use tally_platform::auth::{hook, Authenticator, Permission};
use tally_platform::openapi::{self, Route};
use tally_platform::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::catalog::{Catalog, Plan, Subscription};
use crate::catalog_store::{CatalogSource, CatalogStoreError};
use crate::config::{PlanSpec, SubscriptionSpec};
use crate::explain::{self, ExplainError};
use crate::pricing::Price;

/// Largest request body accepted (a plan version as JSON).
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// What requests are answered from: the stored catalog, read per request.
pub struct ApiState {
    pub source: CatalogSource,
    pub db: Client,
    /// The clock for `recorded_at` of appended entries.
    pub now_ms: fn() -> i64,
    /// Who may call: every route but `/v1/openapi.json`.
    pub auth: Arc<Authenticator>,
}

/// Serves until `shutdown` (the shared server of `tally_platform::http`: bounded
/// connections, header timeout, graceful shutdown).
pub async fn serve(listener: TcpListener, state: Arc<ApiState>, shutdown: Shutdown) {
    let handler = move |req| {
        let state = state.clone();
        async move { route(&state, req).await }
    };
    tally_platform::http::serve(listener, handler, shutdown).await;
}

/// A plan version as the API shows it.
#[derive(Serialize)]
struct PlanView<'a> {
    id: &'a str,
    version: u32,
    currency: &'static str,
    effective_from: String,
    prices: Vec<PriceView<'a>>,
}

#[derive(Serialize)]
struct PriceView<'a> {
    meter: &'a str,
    #[serde(flatten)]
    price: &'a Price,
}

fn plan_view(p: &Plan) -> PlanView<'_> {
    let mut prices: Vec<PriceView<'_>> = p
        .prices
        .iter()
        .map(|(m, price)| PriceView {
            meter: m.as_str(),
            price,
        })
        .collect();
    prices.sort_by_key(|v| v.meter);
    PlanView {
        id: &p.id,
        version: p.version,
        currency: p.currency.code(),
        effective_from: rfc3339(p.effective_from_ms),
        prices,
    }
}

#[derive(Serialize)]
struct SubscriptionView<'a> {
    plan: &'a str,
    /// `weekly`, `monthly`, `quarterly`, `annual`: the periods of fees.
    interval: String,
    /// The periods of usage prices and minimums.
    usage_interval: String,
    billing_anchor_day: u32,
    /// The product line; empty: the main one.
    line: &'a str,
    /// The pinned plan version; none: the version effective at each period start.
    plan_version: Option<u32>,
    time_zone: &'static str,
    effective_from: Option<String>,
    effective_to: Option<String>,
    currency: Option<&'static str>,
    tax_region: Option<&'a str>,
    tax_exempt: bool,
    coupons: Vec<&'a str>,
}

fn subscription_view(s: &Subscription) -> SubscriptionView<'_> {
    SubscriptionView {
        plan: &s.plan,
        interval: s.cycle.cycle.interval(),
        usage_interval: s.usage_cycle.cycle.interval(),
        billing_anchor_day: s.cycle.cycle.anchor_day(),
        line: &s.line,
        plan_version: s.plan_version,
        time_zone: s.cycle.zone.map_or("UTC", |z| z.name()),
        effective_from: (s.from_ms != i64::MIN).then(|| rfc3339(s.from_ms)),
        effective_to: (s.to_ms != i64::MAX).then(|| rfc3339(s.to_ms)),
        currency: s.currency.map(|c| c.code()),
        tax_region: s.tax_region.as_deref(),
        tax_exempt: s.tax_exempt,
        coupons: s.coupons.iter().map(|c| c.id.as_str()).collect(),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

pub(crate) use tally_platform::http::{error, json};

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
    /// [`crate::api_corrections`]: void an event.
    Correct,
    /// [`crate::api_corrections`]: a customer's corrections.
    Corrections,
    /// [`crate::api_backfill`]: import historical events.
    Backfill,
    /// [`crate::api_registry`].
    Registry,
    /// [`crate::api_query`].
    Query,
    /// [`crate::api_rates`].
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
        Op::AddPlan => add_plan(state, req).await,
        Op::AddSubscription => add_subscription(state, req).await,
        Op::CancelSubscription => cancel_subscription(state, req).await,
        Op::Query => crate::api_query::route(state, req, &path).await,
        Op::Registry => crate::api_registry::route(state, req, &path).await,
        Op::Rates => crate::api_rates::route(state, req, &path).await,
        Op::Explain => explain_charge(state, &params[0]).await,
        Op::Correct => crate::api_corrections::post(state, req, who).await,
        Op::Corrections => crate::api_corrections::list(state, &params[0], req.uri().query()).await,
        Op::Backfill => crate::api_backfill::post(state, req, who).await,
        Op::Catalog => match state.source.current(&state.db).await {
            Ok(catalog) => catalog_route(&catalog, &path),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        },
        Op::OpenApi => openapi_reply(),
    }
}

fn openapi_reply() -> Response<Full<Bytes>> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap_or(serde_json::Value::Null);
    json(StatusCode::OK, &doc)
}

fn catalog_route(catalog: &Catalog, path: &[&str]) -> Response<Full<Bytes>> {
    match path {
        ["v1", "plans"] => {
            let plans: Vec<PlanView<'_>> = catalog.plans().map(plan_view).collect();
            json(StatusCode::OK, &plans)
        }
        ["v1", "plans", id] => {
            let plans: Vec<PlanView<'_>> = catalog
                .plans()
                .filter(|p| p.id == *id)
                .map(plan_view)
                .collect();
            if plans.is_empty() {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no plan {id:?}"),
                );
            }
            json(StatusCode::OK, &plans)
        }
        ["v1", "customers", customer, "subscriptions"] => {
            let Ok(customer) = CustomerId::new((*customer).to_owned()) else {
                return error(StatusCode::BAD_REQUEST, "invalid_customer", customer);
            };
            let subs: Vec<SubscriptionView<'_>> = catalog
                .subscriptions_of(&customer)
                .iter()
                .map(subscription_view)
                .collect();
            json(StatusCode::OK, &subs)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", path.join("/")),
    }
}

/// Reads a JSON body of at most [`BODY_BYTES_MAX`] within the shared server's body timeout.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    code: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let bytes = tally_platform::http::read_body(req.into_body(), BODY_BYTES_MAX).await?;
    serde_json::from_slice(&bytes).map_err(|e| error(StatusCode::BAD_REQUEST, code, e))
}

/// The answer to a POST that appends catalog entries: 201 when it appended something, 200
/// when everything was stored already (an identical re-post), 409 `version_exists` on a
/// changed entry, 400 `invalid_code` naming the field, 404 for a missing referent.
pub(crate) fn appended_reply(
    appended: Result<bool, CatalogStoreError>,
    invalid_code: &str,
    identity: serde_json::Value,
) -> Response<Full<Bytes>> {
    match appended {
        Ok(appended) => {
            let status = if appended {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(
                status,
                &serde_json::json!({"entry": identity, "appended": appended}),
            )
        }
        Err(CatalogStoreError::Conflict { setting, detail }) => error(
            StatusCode::CONFLICT,
            "version_exists",
            format!("{setting}: {detail}"),
        ),
        Err(CatalogStoreError::Invalid(e)) => error(StatusCode::BAD_REQUEST, invalid_code, e),
        Err(CatalogStoreError::NotFound(what)) => error(StatusCode::NOT_FOUND, "not_found", what),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    }
}

async fn add_plan(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let plan: PlanSpec = match read_json(req, "invalid_plan").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let identity = serde_json::json!({"id": plan.id, "version": plan.version});
    let added = state
        .source
        .add_plan(&state.db, plan, (state.now_ms)())
        .await;
    appended_reply(
        added.map(|a| a.plans_appended == 1),
        "invalid_plan",
        identity,
    )
}

async fn add_subscription(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let sub: SubscriptionSpec = match read_json(req, "invalid_subscription").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity =
        serde_json::json!({"customer": sub.customer, "effective_from": sub.effective_from});
    let added = state
        .source
        .add_subscription(&state.db, sub, (state.now_ms)())
        .await;
    appended_reply(
        added.map(|a| a.subscriptions_appended == 1),
        "invalid_subscription",
        identity,
    )
}

/// `POST /v1/subscriptions/cancel`: `at` defaults to now; `at_period_end` cancels at the end
/// of the billing period containing `at`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelInput {
    customer: String,
    #[serde(default)]
    at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    at_period_end: bool,
    /// The line to cancel; default the main line.
    #[serde(default)]
    line: Option<String>,
}

async fn cancel_subscription(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let input: CancelInput = match read_json(req, "invalid_cancellation").await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Ok(customer) = CustomerId::new(input.customer.clone()) else {
        return error(StatusCode::BAD_REQUEST, "invalid_customer", input.customer);
    };
    let now_ms = (state.now_ms)();
    let at_ms = input.at.map_or(now_ms, |t| t.timestamp_millis());
    let cancelled = state
        .source
        .cancel_subscription(
            &state.db,
            &customer,
            input.line.as_deref().unwrap_or_default(),
            at_ms,
            input.at_period_end,
            now_ms,
        )
        .await;
    let identity = match &cancelled {
        Ok((record, _)) => serde_json::json!({"customer": record.customer,
            "effective_from": record.effective_from, "state": record.state}),
        Err(_) => serde_json::Value::Null,
    };
    appended_reply(
        cancelled.map(|(_, a)| a.subscriptions_appended == 1),
        "invalid_cancellation",
        identity,
    )
}

async fn explain_charge(state: &ApiState, charge_id: &str) -> Response<Full<Bytes>> {
    let (charge, windows) = match explain::load(&state.db, charge_id).await {
        Ok(x) => x,
        Err(ExplainError::NotFound(id)) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no charge {id}"),
            )
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    let meters = match crate::registry_store::meters(&state.db).await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    let sums = explain::windows_sum_to_quantity(&meters, &charge.meter);
    match explain::explain(&charge, windows, sums) {
        Ok(e) => json(StatusCode::OK, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "unreadable_charge", e),
    }
}

/// The OpenAPI 3.0 document of this API.
pub const OPENAPI: &str = include_str!("api_openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        assert_eq!(openapi::check_routes(ROUTES, &doc), Vec::<String>::new());
    }
}
