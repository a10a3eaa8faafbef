//! The API's tax rate and FX rate routes (version 1, JSON), read from and appended to the
//! stored rates ([`crate::store::rates`]) per request:
//!
//! - `GET /v1/tax_rates` (every entry, by region, code and date), `POST /v1/tax_rates` (a
//!   `[[tax_rates]]` entry);
//! - `GET /v1/fx_rates` (every entry, by pair and date), `POST /v1/fx_rates` (a `[[fx_rates]]`
//!   entry).
//!
//! A POST answers 201 when it appended the entry, 200 for an identical re-post, 409
//! `version_exists` for another rate at a stored (region, code, effective_from) or (from, to,
//! effective_from), 400 `invalid_tax_rate` / `invalid_fx_rate` naming the field. The rater
//! prices with the stored entries from its next pass on. These routes never change or remove
//! a stored entry.

use hyper::StatusCode;

use super::shared::{appended_reply, json, parse, unavailable, ApiState, Reply};
use crate::catalog::fx::FxRateSpec;
use crate::catalog::rates::effective_from_text;
use crate::catalog::tax::TaxRateSpec;
use crate::store;

/// `GET /v1/tax_rates` (`fx` false) or `GET /v1/fx_rates` (`fx` true): every stored entry;
/// 503 `unavailable`.
pub(crate) async fn list(state: &ApiState, fx: bool) -> Reply {
    match store::rates::load(&state.db).await {
        Ok(r) if fx => json(StatusCode::OK, &r.fx_rates().collect::<Vec<_>>()),
        Ok(r) => json(StatusCode::OK, &r.tax_rates().collect::<Vec<_>>()),
        Err(e) => unavailable(e),
    }
}

/// `POST /v1/tax_rates`.
pub(crate) async fn post_tax_rate(state: &ApiState, body: &[u8]) -> Reply {
    let spec: TaxRateSpec = match parse(body, "invalid_tax_rate") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity = serde_json::json!({
        "region": spec.region,
        "code": spec.code,
        "effective_from": effective_from_text(&spec.effective_from),
    });
    let added = store::rates::add_tax_rate(&state.db, &spec, (state.now_ms)()).await;
    appended_reply(added.map(|a| a.any()), "invalid_tax_rate", identity)
}

/// `POST /v1/fx_rates`.
pub(crate) async fn post_fx_rate(state: &ApiState, body: &[u8]) -> Reply {
    let spec: FxRateSpec = match parse(body, "invalid_fx_rate") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let identity = serde_json::json!({
        "from": spec.from,
        "to": spec.to,
        "effective_from": effective_from_text(&spec.effective_from),
    });
    let added = store::rates::add_fx_rate(&state.db, &spec, (state.now_ms)()).await;
    appended_reply(added.map(|a| a.any()), "invalid_fx_rate", identity)
}
