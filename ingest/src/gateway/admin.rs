//! The admin API for API keys, on its own listener (`ingest.admin_addr`, never the public
//! one), behind the API tokens of every Tally API ([`tally_platform::auth`]): role
//! `key_admin` (or `admin`), whose actor every change is audited under.
//!
//! - `POST /v1/admin/keys` `{"customer", "agents"?: [..], "label"?}`: creates a key; the
//!   answer carries the bearer token, shown this once.
//! - `GET /v1/admin/keys`: every key's id, scope, label, creation time and revocation.
//! - `POST /v1/admin/keys/<key id>/revoke`: revokes a key, effective at once on this
//!   instance and on others at their next refresh.
//!
//! `GET /healthz` and `GET /v1/openapi.json` (this API's document) need no token.
//!
//! A missing or bad token is 401 (`missing_token`, `invalid_token`, `revoked_token`), a token
//! of another role 403 (`forbidden`). It never returns a secret or a secret hash.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{on, MethodFilter, MethodRouter};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use tally_platform::auth::{hook, AuthError, Permission, Principal};
use tally_platform::openapi::Route;

use super::auth::KeyRecord;
use super::error::RequestError;
use super::key_store::{self, KeyStoreError};
use super::response::{ErrorBody, ErrorDetail};
use super::server::{
    error_response, health, json, openapi_document, read_body, Gateway, HttpRequest,
};
use tally_platform::clock::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    customer: String,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    label: String,
}

/// A key as the admin API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyView {
    pub key_id: String,
    pub customer: String,
    pub agents: Vec<String>,
    pub label: String,
    pub created_ms: i64,
    pub revoked: bool,
    /// The bearer token; only in the answer to a creation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
}

impl From<&KeyRecord> for KeyView {
    fn from(r: &KeyRecord) -> Self {
        KeyView {
            key_id: r.key_id.clone(),
            customer: r.scope.customer.to_string(),
            agents: r.scope.agents.iter().map(ToString::to_string).collect(),
            label: r.label.clone(),
            created_ms: r.created_ms,
            revoked: r.revoked,
            key: None,
        }
    }
}

fn store_error(e: KeyStoreError) -> RequestError {
    match e {
        KeyStoreError::Invalid { field, detail } => RequestError::InvalidField { field, detail },
        KeyStoreError::UnknownKey(_) => RequestError::NotFound,
        other => RequestError::Unavailable {
            detail: other.to_string(),
        },
    }
}

/// The refusal of an unauthenticated or unauthorized request, in the gateway's error shape.
fn refusal(e: &AuthError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut r = json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                code: e.code(),
                message: e.to_string(),
                field: Some("Authorization"),
            },
        },
    );
    let challenge = hook::refusal(e);
    if let Some(v) = challenge.headers().get(hyper::header::WWW_AUTHENTICATE) {
        r.headers_mut()
            .insert(hyper::header::WWW_AUTHENTICATE, v.clone());
    }
    r
}

/// What an admin route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    OpenApi,
    Keys(KeyOp),
}

/// A key management route (authenticated, audited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOp {
    List,
    Create,
    Revoke,
}

/// Every route of the admin listener: [`route`] answers only these (404/405 otherwise), and a
/// test checks them against [`OPENAPI`] both ways.
pub const ROUTES: &[Route<Op>] = &[
    Route::new("GET", "/healthz", Op::Health),
    Route::new("GET", "/v1/openapi.json", Op::OpenApi),
    Route::new("GET", "/v1/admin/keys", Op::Keys(KeyOp::List)),
    Route::new("POST", "/v1/admin/keys", Op::Keys(KeyOp::Create)),
    Route::new(
        "POST",
        "/v1/admin/keys/{key_id}/revoke",
        Op::Keys(KeyOp::Revoke),
    ),
];

/// The OpenAPI 3.0 document of the admin listener, served at its `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi_admin.json");

/// What an admin route's method answers: `/healthz` and the document as they are; the key
/// routes after authenticating (role `key_admin`), changes audited before they are made.
pub(super) fn handler(op: Op, method: MethodFilter) -> MethodRouter<Arc<Gateway>> {
    type Gw = State<Arc<Gateway>>;
    match op {
        Op::Health => on(method, || async { health() }),
        Op::OpenApi => on(method, || async { openapi_document(OPENAPI) }),
        Op::Keys(KeyOp::Revoke) => on(
            method,
            |State(gw): Gw, Path(key_id): Path<String>, req: HttpRequest| async move {
                authorized(&gw, req, KeyOp::Revoke, &key_id).await
            },
        ),
        Op::Keys(op) => on(method, move |State(gw): Gw, req: HttpRequest| async move {
            authorized(&gw, req, op, "").await
        }),
    }
}

/// Answers a key route for a caller whose token allows it; `key_id` is the path's, if any.
async fn authorized(
    gw: &Gateway,
    req: HttpRequest,
    op: KeyOp,
    key_id: &str,
) -> Response<Full<Bytes>> {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let who = match gw
        .auth
        .authorize(header, Permission::ManageIngestKeys)
        .await
    {
        Ok(who) => who,
        Err(e) => {
            tracing::info!(path = %req.uri().path(), code = e.code(), "admin request refused");
            return refusal(&e);
        }
    };
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let answer = async {
        keys(gw, req, op, key_id, &who)
            .await
            .unwrap_or_else(|e| error_response(&e))
    };
    hook::audited(&gw.auth, &who, &method, &path, answer).await
}

async fn keys(
    gw: &Gateway,
    req: HttpRequest,
    op: KeyOp,
    key_id: &str,
    who: &Principal,
) -> Result<Response<Full<Bytes>>, RequestError> {
    let db = gw.db.as_ref().ok_or_else(|| RequestError::Unavailable {
        detail: "no key store configured".into(),
    })?;
    match op {
        KeyOp::Create => {
            let (head, body) = req.into_parts();
            let body = read_body(gw, &head.headers, body).await?;
            let create: CreateKey =
                serde_json::from_slice(&body).map_err(|e| RequestError::MalformedJson {
                    detail: e.to_string(),
                })?;
            let scope = key_store::scope_from(&create.customer, &create.agents, &create.label)
                .map_err(store_error)?;
            let (token, record) = key_store::create(db, scope, &create.label, now_ms())
                .await
                .map_err(store_error)?;
            gw.keys.upsert(record.clone());
            tracing::info!(key_id = %record.key_id, customer = %record.scope.customer,
                actor = %who.actor_label(), "api key created");
            let mut view = KeyView::from(&record);
            view.key = Some(token);
            Ok(json(StatusCode::CREATED, &view))
        }
        KeyOp::List => {
            let records = key_store::load(db).await.map_err(store_error)?;
            let views: Vec<KeyView> = records.iter().map(KeyView::from).collect();
            Ok(json(StatusCode::OK, &serde_json::json!({ "keys": views })))
        }
        KeyOp::Revoke => {
            let record = key_store::revoke(db, key_id, now_ms())
                .await
                .map_err(store_error)?;
            gw.keys.upsert(record.clone());
            tracing::info!(key_id = %record.key_id, actor = %who.actor_label(), "api key revoked");
            Ok(json(StatusCode::OK, &KeyView::from(&record)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("JSON");
        let problems = tally_platform::openapi::check_routes(ROUTES, &doc);
        assert_eq!(problems, Vec::<String>::new());
    }
}
