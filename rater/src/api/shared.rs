//! What every route module of the API shares: the state requests are answered from, reading
//! a JSON body, and the reply to a POST that appends catalog entries.
//!
//! It owns no route and must never import a route module (they import it).

use std::sync::Arc;

use bytes::Bytes;
use clickhouse::Client;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tally_platform::auth::Authenticator;

use crate::store::{CatalogSource, CatalogStoreError};

pub(crate) use tally_platform::http::{error, json};

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
