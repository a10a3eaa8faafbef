//! Request-level refusals and the one place they map to HTTP: a status, a stable `code`
//! (a public contract, listed in docs/INGEST.md; add codes, never rename one) and a message
//! naming the field or limit. The codes every service shares come from
//! [`tally_platform::http::ErrorCode`] (docs/ERRORS.md), with their status. Per-event refusals are not here: they use the domain's
//! [`tally_domain::Reason`] codes inside a 2xx/4xx batch answer (see [`super::response`]).

use hyper::StatusCode;
use tally_platform::http::ErrorCode;

/// Why a whole request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("header `Content-Type` is {found:?}; expected application/cloudevents+json or application/cloudevents-batch+json")]
    UnsupportedMediaType { found: String },
    #[error("header `Content-Type` is {found:?}; OTLP traces are application/x-protobuf or application/json")]
    UnsupportedOtlpMediaType { found: String },
    #[error("header `Content-Encoding` is {found:?}; only gzip and identity are accepted")]
    UnsupportedEncoding { found: String },
    #[error("request body exceeds {max} bytes (setting ingest.body_max_bytes)")]
    BodyTooLarge { max: usize },
    #[error("batch has more than {max} events (setting ingest.batch_max_events)")]
    BatchTooLarge { max: usize },
    #[error("the spans make more than {max} usage events (setting ingest.burst_per_key); export fewer spans at once")]
    TooManyUsageEvents { max: usize },
    #[error("batch is empty")]
    EmptyBatch,
    #[error("body is not a JSON array of events: {detail}")]
    MalformedBatch { detail: String },
    #[error("{detail}")]
    MalformedOtlp { detail: String },
    #[error("body is not valid gzip: {detail}")]
    MalformedGzip { detail: String },
    #[error("body is not valid JSON: {detail}")]
    MalformedJson { detail: String },
    #[error("reading the body: {detail}")]
    BodyUnreadable { detail: String },
    #[error("client did not send the body within {ms} ms")]
    BodyTimeout { ms: u64 },
    #[error("header `Authorization: Bearer <api key>` is missing")]
    MissingKey,
    #[error("API key is not valid")]
    InvalidKey,
    #[error("API key has been revoked")]
    RevokedKey,
    #[error("admin token is missing or wrong")]
    InvalidAdminToken,
    #[error("rate limit of the API key exceeded; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("field `{field}`: {detail}")]
    InvalidField { field: &'static str, detail: String },
    #[error("the event broker or key store is unavailable: {detail}")]
    Unavailable { detail: String },
}

impl RequestError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        if let Some(shared) = self.shared() {
            return shared.as_str();
        }
        match self {
            RequestError::NotFound
            | RequestError::MethodNotAllowed
            | RequestError::BodyTooLarge { .. }
            | RequestError::BodyUnreadable { .. }
            | RequestError::BodyTimeout { .. }
            // answered above, from the shared list
            | RequestError::Unavailable { .. } => ErrorCode::Internal.as_str(),
            RequestError::UnsupportedMediaType { .. }
            | RequestError::UnsupportedOtlpMediaType { .. } => "unsupported_media_type",
            RequestError::UnsupportedEncoding { .. } => "unsupported_encoding",
            RequestError::BatchTooLarge { .. } | RequestError::TooManyUsageEvents { .. } => {
                "batch_too_large"
            }
            RequestError::EmptyBatch => "empty_batch",
            RequestError::MalformedBatch { .. } => "malformed_batch",
            RequestError::MalformedOtlp { .. } => "malformed_otlp",
            RequestError::MalformedGzip { .. } => "malformed_gzip",
            RequestError::MalformedJson { .. } => "malformed_json",
            RequestError::MissingKey => "missing_key",
            RequestError::InvalidKey => "invalid_key",
            RequestError::RevokedKey => "revoked_key",
            RequestError::InvalidAdminToken => "invalid_admin_token",
            RequestError::RateLimited { .. } => "rate_limited",
            RequestError::InvalidField { .. } => "invalid_field",
        }
    }

    /// The product-wide code this refusal is, when it is one of them.
    pub fn shared(&self) -> Option<ErrorCode> {
        Some(match self {
            RequestError::NotFound => ErrorCode::NotFound,
            RequestError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            RequestError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            RequestError::BodyUnreadable { .. } => ErrorCode::BodyUnreadable,
            RequestError::BodyTimeout { .. } => ErrorCode::RequestTimeout,
            RequestError::Unavailable { .. } => ErrorCode::Unavailable,
            _ => return None,
        })
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        if let Some(shared) = self.shared() {
            return shared.status();
        }
        match self {
            RequestError::UnsupportedMediaType { .. }
            | RequestError::UnsupportedOtlpMediaType { .. }
            | RequestError::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::BatchTooLarge { .. } | RequestError::TooManyUsageEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RequestError::EmptyBatch
            | RequestError::MalformedBatch { .. }
            | RequestError::MalformedGzip { .. }
            | RequestError::MalformedOtlp { .. }
            | RequestError::MalformedJson { .. }
            | RequestError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            RequestError::MissingKey
            | RequestError::InvalidKey
            | RequestError::RevokedKey
            | RequestError::InvalidAdminToken => StatusCode::UNAUTHORIZED,
            RequestError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RequestError::UnsupportedMediaType { .. }
            | RequestError::UnsupportedOtlpMediaType { .. } => Some("Content-Type"),
            RequestError::UnsupportedEncoding { .. } => Some("Content-Encoding"),
            RequestError::MissingKey | RequestError::InvalidKey | RequestError::RevokedKey => {
                Some("Authorization")
            }
            RequestError::InvalidAdminToken => Some("Authorization"),
            RequestError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}
