//! The API's explanation route: `GET /v1/charges/{charge_id}/explain`, one stored charge's
//! usage windows, line arithmetic, rounding, discounts and tax ([`crate::rating::explain`]).
//!
//! It owns only the HTTP answer; the explanation and its check are never computed here.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::shared::{error, json, ApiState};
use crate::rating::explain::{self, ExplainError};

pub(crate) async fn explain_charge(state: &ApiState, charge_id: &str) -> Response<Full<Bytes>> {
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
    let meters = match crate::store::registry::meters(&state.db).await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e),
    };
    let sums = explain::windows_sum_to_quantity(&meters, &charge.meter);
    match explain::explain(&charge, windows, sums) {
        Ok(e) => json(StatusCode::OK, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "unreadable_charge", e),
    }
}
