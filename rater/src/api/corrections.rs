//! The API's correction routes (version 1, JSON; the rules are [`crate::corrections`]):
//!
//! - `POST /v1/corrections`: void or amend a committed event named by (customer, source, id)
//!   and its time, with a reason; the actor is the token's. 201 with the correction when it
//!   was appended, 200 when the same correction (same id and content) was stored already; 400
//!   `invalid_correction` or `invalid_quantity` (an amend's data), 404 `event_not_found`, 409 `already_voided` (another correction
//!   voided the event), `correction_exists` (the id names another correction),
//!   `correction_conflict` (a racing correction of the event counts instead), 422
//!   `not_correctable` (a meter that is not a SUM), 503 `unavailable`.
//! - `GET /v1/customers/{id}/corrections`: the customer's corrections by correction id, a
//!   page at a time (`limit`, default 100, at most 1000; `after`, the last id of the previous
//!   page), each with `counts` (false for the loser of a race); 400 `invalid_parameter`.

use std::collections::{BTreeSet, HashSet};

use hyper::StatusCode;
use serde::Serialize;
use tally_platform::auth::Principal;

use super::shared::{error, json, parse, unavailable, ApiState, Reply};
use crate::corrections::{self, Correction, CorrectionError, CorrectionRequest};
use crate::store;

/// A correction as the API shows it.
#[derive(Serialize)]
struct CorrectionView<'a> {
    correction_id: &'a str,
    kind: &'a str,
    customer: &'a str,
    source: &'a str,
    id: &'a str,
    time: String,
    revision: u32,
    actor: &'a str,
    reason: &'a str,
    created: String,
    counts: bool,
}

fn view(c: &Correction, counts: bool) -> CorrectionView<'_> {
    CorrectionView {
        correction_id: &c.correction_id,
        kind: &c.kind,
        customer: &c.customer,
        source: &c.agent,
        id: &c.event_id,
        time: rfc3339(c.event_time_ms),
        revision: c.revision,
        actor: &c.actor,
        reason: &c.reason,
        created: rfc3339(c.created_ms),
        counts,
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn refused(e: &CorrectionError) -> Reply {
    let status = match e {
        CorrectionError::Invalid { .. } | CorrectionError::InvalidQuantity { .. } => {
            StatusCode::BAD_REQUEST
        }
        CorrectionError::EventNotFound { .. } => StatusCode::NOT_FOUND,
        CorrectionError::NotCorrectable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        CorrectionError::AlreadyVoided { .. }
        | CorrectionError::CorrectionExists(_)
        | CorrectionError::Conflict { .. } => StatusCode::CONFLICT,
        CorrectionError::ClickHouse(_) | CorrectionError::Meters(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    error(status, e.code(), e)
}

/// `POST /v1/corrections` by `who`.
pub(crate) async fn post(state: &ApiState, body: &[u8], who: &Principal) -> Reply {
    let body: CorrectionRequest = match parse(body, "invalid_correction") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let valid = match body.validate() {
        Ok(v) => v,
        Err(e) => return refused(&e),
    };
    let actor = who.actor_label();
    match store::corrections::correct(&state.db, &valid, &actor, (state.now_ms)()).await {
        Ok((c, appended)) => {
            let status = if appended {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            json(status, &view(&c, true))
        }
        Err(e) => refused(&e),
    }
}

/// `GET /v1/customers/{id}/corrections`.
pub(crate) async fn list(state: &ApiState, customer: &str, query: Option<&str>) -> Reply {
    let page = match Page::parse(query) {
        Ok(page) => page,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_parameter", e),
    };
    let listed =
        match store::corrections::of_customer(&state.db, customer, &page.after, page.limit).await {
            Ok(listed) => listed,
            Err(e) => return unavailable(e),
        };
    // whether each counts depends on every correction of its event, on this page or not
    let events: BTreeSet<(&str, &str)> = listed
        .iter()
        .map(|c| (c.agent.as_str(), c.event_id.as_str()))
        .collect();
    let events: Vec<(&str, &str)> = events.into_iter().collect();
    let all = match store::corrections::of_events(&state.db, customer, &events).await {
        Ok(all) => all,
        Err(e) => return unavailable(e),
    };
    // the counted contents of every id and the winners of every revision, over all the rows
    let counted: HashSet<(&str, &str, &str, u32, &str)> = corrections::winners(&all)
        .into_iter()
        .map(|w| {
            (
                w.correction_id.as_str(),
                w.agent.as_str(),
                w.event_id.as_str(),
                w.revision,
                w.digest.as_str(),
            )
        })
        .collect();
    let views: Vec<CorrectionView<'_>> = listed
        .iter()
        .map(|c| {
            let key = (
                c.correction_id.as_str(),
                c.agent.as_str(),
                c.event_id.as_str(),
                c.revision,
                c.digest.as_str(),
            );
            view(c, counted.contains(&key))
        })
        .collect();
    json(StatusCode::OK, &views)
}

/// The most corrections one page lists, and the default.
pub const PAGE_MAX: u32 = 1000;
pub const PAGE_DEFAULT: u32 = 100;

/// `?limit=N&after=<correction id>` of the list.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    limit: u32,
    after: String,
}

impl Page {
    fn parse(query: Option<&str>) -> Result<Page, String> {
        let mut page = Page {
            limit: PAGE_DEFAULT,
            after: String::new(),
        };
        for piece in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match piece.split_once('=').unwrap_or((piece, "")) {
                ("limit", v) => {
                    page.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=PAGE_MAX).contains(n))
                        .ok_or_else(|| format!("limit: 1 to {PAGE_MAX}, not {v:?}"))?;
                }
                ("after", v) => {
                    page.after = tally_domain::EventId::new(v.to_owned())
                        .map_err(|e| format!("after: a correction id: {e}"))?
                        .to_string();
                }
                (k, _) => return Err(format!("unknown parameter {k:?}; limit and after are")),
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod page_tests {
    use super::*;

    #[test]
    fn a_page_is_bounded_and_its_cursor_is_a_correction_id() {
        assert_eq!(
            Page::parse(None),
            Ok(Page {
                limit: PAGE_DEFAULT,
                after: String::new()
            })
        );
        assert_eq!(
            Page::parse(Some("limit=2&after=v-1")),
            Ok(Page {
                limit: 2,
                after: "v-1".into()
            })
        );
        let long = format!("after={}", "x".repeat(200));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "after=",
            &long,
            "offset=3",
        ] {
            assert!(Page::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
