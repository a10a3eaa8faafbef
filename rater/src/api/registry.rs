//! The API's customer, agent and meter routes (version 1, JSON), read from and appended to
//! the stored registry ([`crate::store::registry`]) per request:
//!
//! - `GET /v1/customers` (latest version of each), `GET /v1/customers/{id}` (every version),
//!   `POST /v1/customers` (a `[[customers]]` entry, agents included);
//! - `GET /v1/customers/{id}/agents` (latest version of each), `POST /v1/customers/{id}/agents`;
//! - `GET /v1/meters` (latest version of each: what the rater prices), `GET /v1/meters/{slug}`
//!   (every version), `POST /v1/meters`.
//!
//! A POST answers 201 when it appended something, 200 for an identical re-post, 409
//! `version_exists` for a changed existing version (or one below the latest), 400
//! `invalid_customer` / `invalid_agent` / `invalid_meter` naming the field, 404 for an
//! agent of an unknown customer.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tally_domain::CustomerId;

use super::shared::{appended_reply, error, json, read_json, ApiState};
use crate::catalog::customers::{AgentSpec, CustomerSpec};
use crate::catalog::meters::MeterEntry;
use crate::catalog::registry::Registry;
use crate::store::CatalogStoreError;
use crate::store::{self, registry::Appended};

type Reply = Response<Full<Bytes>>;

pub(crate) async fn route(state: &ApiState, req: Request<Incoming>, path: &[&str]) -> Reply {
    let method = req.method().clone();
    match (method, path) {
        (Method::POST, ["v1", "customers"]) => post_customer(state, req).await,
        (Method::POST, ["v1", "customers", id, "agents"]) => post_agent(state, req, id).await,
        (Method::POST, ["v1", "meters"]) => post_meter(state, req).await,
        (Method::GET, _) => match store::registry::load(&state.db).await {
            Ok(r) => show(&r, path),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
        },
        (m, _) => error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", m),
    }
}

fn customer_id(text: &str) -> Result<CustomerId, Box<Reply>> {
    CustomerId::new(text.to_owned())
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "invalid_customer", e)))
}

fn show(r: &Registry, path: &[&str]) -> Reply {
    match path {
        ["v1", "customers"] => json(StatusCode::OK, &r.customers().collect::<Vec<_>>()),
        ["v1", "customers", id] => {
            let id = match customer_id(id) {
                Ok(id) => id,
                Err(reply) => return *reply,
            };
            let versions = r.customer_versions(&id);
            if versions.is_empty() {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no customer {id}"),
                );
            }
            json(StatusCode::OK, &versions)
        }
        ["v1", "customers", id, "agents"] => {
            let id = match customer_id(id) {
                Ok(id) => id,
                Err(reply) => return *reply,
            };
            if r.customer_versions(&id).is_empty() {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no customer {id}"),
                );
            }
            json(StatusCode::OK, &r.agents_of(&id))
        }
        ["v1", "meters"] => json(StatusCode::OK, &r.meter_entries().collect::<Vec<_>>()),
        ["v1", "meters", slug] => {
            let versions = r.meter_versions(slug);
            if versions.is_empty() {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no meter {slug:?}"),
                );
            }
            json(StatusCode::OK, &versions)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", path.join("/")),
    }
}

fn answer(
    added: Result<Appended, CatalogStoreError>,
    invalid_code: &str,
    identity: serde_json::Value,
) -> Reply {
    appended_reply(added.map(|a| a.any()), invalid_code, identity)
}

async fn post_customer(state: &ApiState, req: Request<Incoming>) -> Reply {
    let spec: CustomerSpec = match read_json(req, "invalid_customer").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity = serde_json::json!({"id": spec.id, "version": spec.version});
    let added = store::registry::add_customer(&state.db, &spec, (state.now_ms)()).await;
    answer(added, "invalid_customer", identity)
}

async fn post_agent(state: &ApiState, req: Request<Incoming>, customer: &str) -> Reply {
    let customer = match customer_id(customer) {
        Ok(id) => id,
        Err(reply) => return *reply,
    };
    let spec: AgentSpec = match read_json(req, "invalid_agent").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity =
        serde_json::json!({"customer": customer, "id": spec.id, "version": spec.version});
    let added = store::registry::add_agent(&state.db, &customer, &spec, (state.now_ms)()).await;
    answer(added, "invalid_agent", identity)
}

async fn post_meter(state: &ApiState, req: Request<Incoming>) -> Reply {
    let entry: MeterEntry = match read_json(req, "invalid_meter").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity = serde_json::json!({"slug": entry.slug, "version": entry.version});
    let added = state
        .source
        .add_meter(&state.db, &entry, (state.now_ms)())
        .await;
    answer(added, "invalid_meter", identity)
}
