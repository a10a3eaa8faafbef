//! What every route module of the API shares: the state requests are answered from, reading
//! a JSON body a route received (the shared `RawBody` extractor reads it), a customer named
//! by the path, and the reply to a POST that appends catalog entries.
//!
//! It owns no route and must never import a route module (they import it).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::Extension;
use clickhouse::Client;
use hyper::{Method, Response, StatusCode};
use tally_domain::CustomerId;
use tally_platform::auth::{hook, Authenticator, Permission};
use tally_platform::http::{self, Body, BodyLimit, ErrorCode, Router};

use crate::store::{CatalogSource, CatalogStoreError};

pub(crate) use tally_platform::http::{error, fail, json};

/// An answer.
pub(crate) type Reply = Response<Body>;

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
    /// `POST /v1/backfill`: how far from an imported event's time a live commit of its
    /// identity is found, in seconds either side (`aggregator.dedup_horizon_secs`;
    /// [`crate::backfill::HORIZON_SECS`] by default).
    pub backfill_horizon_secs: u64,
}

/// The router of one of the rater's APIs from its route table: unrouted requests answered
/// 404/405 in the shared shape, bodies read within [`BODY_BYTES_MAX`], and every request but
/// `GET /v1/openapi.json` authenticated before it is routed (the 401/403 of an unknown path
/// included) by the shared [`hook::guard`]: reads need `read`, a change through a path what
/// `writes(path)` says, and a change is audited before it is made.
pub(crate) fn secured<S: Clone + Send + Sync + 'static>(
    table: Router<S>,
    state: S,
    auth: Arc<Authenticator>,
    writes: fn(&str) -> Permission,
) -> Router {
    let guard = move |req: Request, next: Next| {
        let auth = auth.clone();
        async move {
            if req.method() == Method::GET && req.uri().path() == "/v1/openapi.json" {
                return next.run(req).await;
            }
            let writes = writes(req.uri().path());
            hook::guard(&auth, writes, req, next).await
        }
    };
    // the guard wraps the routed router rather than its routes, so it answers before routing:
    // its 401 never carries the `Allow` of a method router
    let routed = http::with_fallbacks(table).with_state(state);
    Router::new()
        .fallback_service(routed)
        .layer(middleware::from_fn(guard))
        .layer(Extension(BodyLimit(BODY_BYTES_MAX)))
}

/// `body` as JSON of type `T`; 400 `code` with the parser's message otherwise (the route's
/// own code: `invalid_plan`, `invalid_budget`, ...).
// one answer per request, never stored: boxing it would only cost an allocation
#[allow(clippy::result_large_err)]
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8], code: &str) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, code, e))
}

/// 503 `unavailable`: a store the answer needs failed.
pub(crate) fn unavailable(e: impl ToString) -> Reply {
    fail(ErrorCode::Unavailable, e)
}

/// The path's `{id}` as a customer id; 400 `invalid_customer` otherwise. An extractor, so
/// a route taking it refuses a bad id before it reads the body.
pub(crate) struct CustomerPath(pub CustomerId);

impl<S: Send + Sync> FromRequestParts<S> for CustomerPath {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let id = params
            .into_iter()
            .find_map(|(name, value)| (name == "id").then_some(value))
            .unwrap_or_default();
        CustomerId::new(id)
            .map(CustomerPath)
            .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_customer", e).into_response())
    }
}

/// The answer to a POST that appends catalog entries: 201 when it appended something, 200
/// when everything was stored already (an identical re-post), 409 `version_exists` on a
/// changed entry, 400 `invalid_code` naming the field, 404 for a missing referent.
pub(crate) fn appended_reply(
    appended: Result<bool, CatalogStoreError>,
    invalid_code: &str,
    identity: serde_json::Value,
) -> Reply {
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
        Err(e @ CatalogStoreError::Backdated(_)) => {
            error(StatusCode::CONFLICT, "backdated_change", e)
        }
        Err(e @ CatalogStoreError::LaterRecords(_)) => {
            error(StatusCode::CONFLICT, "later_records", e)
        }
        Err(e @ CatalogStoreError::Quarantined(_)) => {
            error(StatusCode::CONFLICT, "catalog_conflict", e)
        }
        Err(CatalogStoreError::NotFound(what)) => fail(ErrorCode::NotFound, what),
        Err(e) => unavailable(e),
    }
}
