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

use hyper::StatusCode;
use tally_domain::CustomerId;
use tally_platform::http::ErrorCode;

use super::shared::{appended_reply, error, fail, json, parse, unavailable, ApiState, Reply};
use crate::catalog::customers::{AgentSpec, CustomerSpec};
use crate::catalog::meters::MeterEntry;
use crate::catalog::registry::Registry;
use crate::store::CatalogStoreError;
use crate::store::{self, registry::Appended};

/// Answers from the stored registry, read now; 503 `unavailable` when it cannot be read.
pub(crate) async fn read(state: &ApiState, show: impl FnOnce(&Registry) -> Reply) -> Reply {
    match store::registry::load(&state.db).await {
        Ok(r) => show(&r),
        Err(e) => unavailable(e),
    }
}

fn customer_id(text: &str) -> Result<CustomerId, Box<Reply>> {
    CustomerId::new(text.to_owned())
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "invalid_customer", e)))
}

/// `GET /v1/customers`: the latest version of each.
pub(crate) fn customers(r: &Registry) -> Reply {
    json(StatusCode::OK, &r.customers().collect::<Vec<_>>())
}

/// `GET /v1/customers/{id}`: every version; 400 `invalid_customer`, 404 `not_found`.
pub(crate) fn customer(r: &Registry, id: &str) -> Reply {
    let id = match customer_id(id) {
        Ok(id) => id,
        Err(reply) => return *reply,
    };
    let versions = r.customer_versions(&id);
    if versions.is_empty() {
        return fail(ErrorCode::NotFound, format!("no customer {id}"));
    }
    json(StatusCode::OK, &versions)
}

/// `GET /v1/customers/{id}/agents`: the latest version of each; 400 `invalid_customer`, 404
/// `not_found` for an unknown customer.
pub(crate) fn agents(r: &Registry, id: &str) -> Reply {
    let id = match customer_id(id) {
        Ok(id) => id,
        Err(reply) => return *reply,
    };
    if r.customer_versions(&id).is_empty() {
        return fail(ErrorCode::NotFound, format!("no customer {id}"));
    }
    json(StatusCode::OK, &r.agents_of(&id))
}

/// `GET /v1/meters`: the latest version of each (what the rater prices).
pub(crate) fn meters(r: &Registry) -> Reply {
    json(StatusCode::OK, &r.meter_entries().collect::<Vec<_>>())
}

/// `GET /v1/meters/{slug}`: every version; 404 `not_found`.
pub(crate) fn meter(r: &Registry, slug: &str) -> Reply {
    let versions = r.meter_versions(slug);
    if versions.is_empty() {
        return fail(ErrorCode::NotFound, format!("no meter {slug:?}"));
    }
    json(StatusCode::OK, &versions)
}

fn answer(
    added: Result<Appended, CatalogStoreError>,
    invalid_code: &str,
    identity: serde_json::Value,
) -> Reply {
    appended_reply(added.map(|a| a.any()), invalid_code, identity)
}

/// `POST /v1/customers`.
pub(crate) async fn post_customer(state: &ApiState, body: &[u8]) -> Reply {
    let spec: CustomerSpec = match parse(body, "invalid_customer") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity = serde_json::json!({"id": spec.id, "version": spec.version});
    let added = store::registry::add_customer(&state.db, &spec, (state.now_ms)()).await;
    answer(added, "invalid_customer", identity)
}

/// `POST /v1/customers/{id}/agents` (the id checked by the route's extractor, before the
/// body was read).
pub(crate) async fn post_agent(state: &ApiState, customer: &CustomerId, body: &[u8]) -> Reply {
    let spec: AgentSpec = match parse(body, "invalid_agent") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity =
        serde_json::json!({"customer": customer, "id": spec.id, "version": spec.version});
    let added = store::registry::add_agent(&state.db, customer, &spec, (state.now_ms)()).await;
    answer(added, "invalid_agent", identity)
}

/// `POST /v1/meters`.
pub(crate) async fn post_meter(state: &ApiState, body: &[u8]) -> Reply {
    let entry: MeterEntry = match parse(body, "invalid_meter") {
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
