//! The JSON answers of the gateway. Shapes and codes are a public contract (docs/INGEST.md).
//!
//! An events request is answered with one [`EventResult`] per event, in request order:
//! `accepted` (stored by JetStream), `duplicate` (JetStream already had that id inside its
//! duplicate window), `rejected` (with a [`tally_domain::Reason`] code and the field) or
//! `failed` (not stored; resend it, the id makes that safe). A refused request is an
//! [`ErrorBody`].

use serde::Serialize;

use super::error::RequestError;

/// The outcome of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Accepted,
    Duplicate,
    Rejected,
    Failed,
}

/// One event's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventResult {
    /// Position in the request (0 for a single event).
    pub index: usize,
    /// The event id, when the event had a valid one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub status: Status,
    /// Reason code of a rejection (`malformed`, `too_large`, `subject_mismatch`) or
    /// `unavailable` for a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// The offending attribute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EventResult {
    pub fn rejected(
        index: usize,
        id: Option<String>,
        code: &'static str,
        field: Option<String>,
        detail: String,
    ) -> Self {
        EventResult {
            index,
            id,
            status: Status::Rejected,
            code: Some(code),
            field,
            detail: Some(detail),
        }
    }
}

/// The answer to `POST /v1/events`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventsResponse {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub failed: usize,
    pub results: Vec<EventResult>,
}

impl EventsResponse {
    pub fn from_results(results: Vec<EventResult>) -> Self {
        let count = |s: Status| results.iter().filter(|r| r.status == s).count();
        EventsResponse {
            accepted: count(Status::Accepted),
            duplicates: count(Status::Duplicate),
            rejected: count(Status::Rejected),
            failed: count(Status::Failed),
            results,
        }
    }

    /// 200 when every event is stored (accepted or duplicate); 503 when any failed (resend
    /// the request: ids make it safe); else 400 when any was rejected (the others are stored).
    pub fn status(&self) -> hyper::StatusCode {
        if self.failed > 0 {
            hyper::StatusCode::SERVICE_UNAVAILABLE
        } else if self.rejected > 0 {
            hyper::StatusCode::BAD_REQUEST
        } else {
            hyper::StatusCode::OK
        }
    }
}

/// The answer to a refused request: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

impl From<&RequestError> for ErrorBody {
    fn from(e: &RequestError) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: e.code(),
                message: e.to_string(),
                field: e.field(),
            },
        }
    }
}
