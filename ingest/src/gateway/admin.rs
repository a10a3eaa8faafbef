//! The admin API for API keys, behind `Authorization: Bearer <ingest.admin_token>`:
//!
//! - `POST /v1/admin/keys` `{"customer", "agents"?: [..], "label"?}`: creates a key; the
//!   answer carries the bearer token, shown this once.
//! - `GET /v1/admin/keys`: every key's id, scope, label, creation time and revocation.
//! - `POST /v1/admin/keys/<key id>/revoke`: revokes a key, effective at once on this
//!   instance and on others at their next refresh.
//!
//! Off (404) when no admin token is configured. It never returns a secret or a secret hash.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::auth::{constant_time_eq, hash_secret, KeyRecord};
use super::error::RequestError;
use super::key_store::{self, KeyStoreError};
use super::server::{json, read_body, Gateway};

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

fn check_token(gw: &Gateway, req: &Request<Incoming>) -> Result<(), RequestError> {
    if gw.cfg.admin_token.is_empty() {
        return Err(RequestError::NotFound);
    }
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(RequestError::InvalidAdminToken)?;
    let ok = constant_time_eq(
        hash_secret(presented).as_bytes(),
        hash_secret(&gw.cfg.admin_token).as_bytes(),
    );
    ok.then_some(()).ok_or(RequestError::InvalidAdminToken)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Routes `/v1/admin/...`.
pub async fn route(
    gw: &Gateway,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, RequestError> {
    check_token(gw, &req)?;
    let db = gw.db.as_ref().ok_or_else(|| RequestError::Unavailable {
        detail: "no key store configured".into(),
    })?;
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/v1/admin/").split('/').collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::POST, ["keys"]) => {
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
            let mut view = KeyView::from(&record);
            view.key = Some(token);
            Ok(json(StatusCode::CREATED, &view))
        }
        (Method::GET, ["keys"]) => {
            let records = key_store::load(db).await.map_err(store_error)?;
            let views: Vec<KeyView> = records.iter().map(KeyView::from).collect();
            Ok(json(StatusCode::OK, &serde_json::json!({ "keys": views })))
        }
        (Method::POST, ["keys", key_id, "revoke"]) => {
            let record = key_store::revoke(db, key_id, now_ms())
                .await
                .map_err(store_error)?;
            gw.keys.upsert(record.clone());
            Ok(json(StatusCode::OK, &KeyView::from(&record)))
        }
        (_, ["keys"]) | (_, ["keys", _, "revoke"]) => Err(RequestError::MethodNotAllowed),
        _ => Err(RequestError::NotFound),
    }
}
