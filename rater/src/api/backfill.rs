//! The API's backfill route (version 1, JSON; the rules are [`crate::backfill`]):
//!
//! - `POST /v1/backfill`: imports historical usage events (CloudEvents) for a named period
//!   `[from, to)`, exactly once, with a reason; the actor is the token's. 200 with the
//!   report (`imported`, `already_present`, `refused` per reason with examples); a refused
//!   event never fails the others. 400 `invalid_backfill` (a field of the import, more than
//!   [`EVENTS_MAX`] events, a body over the API's bound), 503 `unavailable` (storage; the
//!   import can be re-sent as is: what it imported stays imported once).

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tally_platform::auth::Principal;

use super::shared::{error, json, parse, unavailable, ApiState, Reply};
use crate::backfill::Import;
use crate::corrections::CorrectionError;
use crate::store::backfill::Importer;

/// Most events one request imports (a larger file goes through `tally-rater backfill`).
pub const EVENTS_MAX: usize = 10_000;

/// An import as the API receives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillRequest {
    import_id: String,
    /// RFC 3339: the named period's start (inclusive) and end (exclusive).
    from: String,
    to: String,
    reason: String,
    events: Vec<Box<RawValue>>,
}

fn invalid(detail: impl std::fmt::Display) -> Reply {
    error(StatusCode::BAD_REQUEST, "invalid_backfill", detail)
}

fn time(field: &str, text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("field {field}: {e}"))
}

/// `POST /v1/backfill` by `who`.
pub(crate) async fn post(state: &ApiState, body: &[u8], who: &Principal) -> Reply {
    let body: BackfillRequest = match parse(body, "invalid_backfill") {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.events.len() > EVENTS_MAX {
        return invalid(format!("field events: at most {EVENTS_MAX} per request"));
    }
    let (from_ms, to_ms) = match (time("from", &body.from), time("to", &body.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return invalid(e),
    };
    let import = Import {
        import_id: body.import_id,
        from_ms,
        to_ms,
        reason: body.reason,
        actor: who.actor_label(),
        now_ms: (state.now_ms)(),
    };
    let mut importer = match Importer::start(&state.db, import).await {
        Ok(i) => i,
        Err(e @ CorrectionError::Invalid { .. }) => return invalid(e),
        Err(e) => return unavailable(e),
    };
    importer.set_horizon_secs(state.backfill_horizon_secs);
    for (at, event) in (0u64..).zip(&body.events) {
        if let Err(e) = importer.add(at, event.get().as_bytes()).await {
            return unavailable(e);
        }
    }
    match importer.finish().await {
        Ok(report) => json(StatusCode::OK, &report),
        Err(e) => unavailable(e),
    }
}
