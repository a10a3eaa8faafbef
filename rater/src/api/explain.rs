//! The API's explanation route: `GET /v1/charges/{charge_id}/explain`, one stored charge's
//! usage windows, line arithmetic, rounding, discounts and tax ([`crate::rating::explain`]).
//!
//! It owns only the HTTP answer; the explanation and its check are never computed here.

use hyper::StatusCode;
use tally_platform::http::ErrorCode;

use super::shared::{error, fail, json, unavailable, ApiState, Reply};
use crate::rating::explain::{self, ExplainError};

/// `GET /v1/charges/{charge_id}/explain`.
pub(crate) async fn explain_charge(state: &ApiState, charge_id: &str) -> Reply {
    let (charge, windows) = match explain::load(&state.db, charge_id).await {
        Ok(x) => x,
        Err(ExplainError::NotFound(id)) => {
            return fail(ErrorCode::NotFound, format!("no charge {id}"))
        }
        Err(e) => return unavailable(e),
    };
    let meters = match crate::store::registry::meters(&state.db).await {
        Ok(m) => m,
        Err(e) => return unavailable(e),
    };
    let sums = explain::windows_sum_to_quantity(&meters, &charge.meter);
    match explain::explain(&charge, windows, sums) {
        Ok(e) => json(StatusCode::OK, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "unreadable_charge", e),
    }
}
