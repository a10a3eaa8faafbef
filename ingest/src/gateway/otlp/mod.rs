//! `POST /v1/traces`: OpenTelemetry traces (OTLP/HTTP, protobuf or JSON, gzip allowed) as a
//! source of usage. Each span carrying GenAI token counts becomes `llm.tokens` events, which
//! are validated, scope-checked and published exactly as `POST /v1/events` publishes (same
//! limits, `Nats-Msg-Id`, acks); every other span is ignored. The contract is in
//! docs/INGEST.md.
//!
//! The request is authenticated by API key before its body is read, bounded by
//! `body_max_bytes` and `body_timeout_ms` like an events request, and rate-limited by the
//! events it makes. The answer is OTLP's: 200 with an `ExportTraceServiceResponse` whose
//! `partial_success` counts the rejected spans and says why; 400 for a body that is not an
//! export request; 415 for another media type; 503 when JetStream did not store every event
//! (retrying the export is safe: the ids are the same); other refusals as for `/v1/events`,
//! each with a `google.rpc.Status` body in the request's encoding.
//!
//! # Layout
//! - [`wire`]: the encodings, decoding requests, encoding answers (pure).
//! - [`genai`]: GenAI spans to usage events: attributes, kinds, ids (pure).

pub mod genai;
pub mod wire;

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;

use super::error::RequestError;
use super::response::Status;
use super::server::{error_response, read_body, Gateway, HttpRequest};
use super::{decode, events, metrics};
use genai::{Conversion, SpanRef};
use wire::Encoding;

/// Most refusal reasons described in one `partial_success.error_message`.
const MESSAGE_REASONS_MAX: usize = 8;

/// Answers one `POST /v1/traces`.
pub async fn route(gw: &Gateway, req: HttpRequest) -> Response<Full<Bytes>> {
    let (head, body) = req.into_parts();
    let header = |name| {
        head.headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    // refusals are encoded like the request when it names a known encoding, else as JSON
    let encoding = Encoding::of(header(CONTENT_TYPE)).unwrap_or(Encoding::Json);
    let answer = async {
        let (key_id, scope) = gw
            .authenticate(header(hyper::header::AUTHORIZATION))
            .await?;
        let encoding = Encoding::of(header(CONTENT_TYPE))?;
        let gzip = decode::is_gzip(header(hyper::header::CONTENT_ENCODING))?;
        let body = read_body(gw, &head.headers, body).await?;
        let body = if gzip {
            Bytes::from(decode::gunzip(&body, gw.limits.body_max_bytes)?)
        } else {
            body
        };
        let request = wire::decode_request(&body, encoding)?;
        let conversion = genai::convert(&request, &scope);
        let events = conversion.event_count();
        let max = gw.cfg.burst_per_key as usize;
        if events > max {
            return Err(RequestError::TooManyUsageEvents { max });
        }
        if events > 0 {
            gw.limiter
                .take(&key_id, events, Instant::now())
                .map_err(|retry_after_secs| RequestError::RateLimited { retry_after_secs })?;
        }
        export(gw, &scope, conversion, encoding).await
    };
    match answer.await {
        Ok(response) => response,
        Err(e) => refusal(&e, encoding),
    }
}

/// Publishes the events of the accepted spans and answers with the rejected ones.
async fn export(
    gw: &Gateway,
    scope: &super::auth::Scope,
    conversion: Conversion,
    encoding: Encoding,
) -> Result<Response<Full<Bytes>>, RequestError> {
    let raws: Vec<&[u8]> = conversion
        .usage
        .iter()
        .flat_map(|s| s.events.iter().map(Vec::as_slice))
        .collect();
    let results = events::publish_all(gw, scope, &raws).await;
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let (accepted, duplicates, failed) = (
        count(Status::Accepted),
        count(Status::Duplicate),
        count(Status::Failed),
    );
    // one reason per refused span: the span's own refusal, or its first rejected event's
    let mut refused: Vec<(SpanRef, &'static str, String)> = conversion
        .refused
        .iter()
        .map(|(at, why)| (at.clone(), why.code(), why.to_string()))
        .collect();
    let mut next = 0;
    for span in &conversion.usage {
        let mine = &results[next..next + span.events.len()];
        next += span.events.len();
        if let Some(r) = mine.iter().find(|r| r.status == Status::Rejected) {
            let detail = r.detail.clone().unwrap_or_default();
            refused.push((span.span.clone(), r.code.unwrap_or("malformed"), detail));
        }
    }
    let reasons: Vec<&'static str> = refused.iter().map(|(_, code, _)| *code).collect();
    metrics::events(accepted, duplicates, failed, &reasons);
    if failed > 0 {
        let detail = results
            .iter()
            .find_map(|r| (r.status == Status::Failed).then(|| r.detail.clone()))
            .flatten()
            .unwrap_or_default();
        return Err(RequestError::Unavailable {
            detail: format!(
                "{failed} usage events were not stored ({detail}); send the export again"
            ),
        });
    }
    let body = wire::export_response(encoding, refused.len(), &describe(&refused));
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    Ok(r)
}

/// `partial_success.error_message`: how many spans each code refused, with the first one's
/// detail, e.g. `2 spans rejected: subject_mismatch (2, first span 5b8e…/051f…: …)`.
fn describe(refused: &[(SpanRef, &'static str, String)]) -> String {
    if refused.is_empty() {
        return String::new();
    }
    let mut by_code: BTreeMap<&str, (usize, &SpanRef, &str)> = BTreeMap::new();
    for (at, code, detail) in refused {
        by_code.entry(code).or_insert((0, at, detail)).0 += 1;
    }
    let parts: Vec<String> = by_code
        .iter()
        .take(MESSAGE_REASONS_MAX)
        .map(|(code, (n, at, detail))| format!("{code} ({n}, first {at}: {detail})"))
        .collect();
    let noun = if refused.len() == 1 { "span" } else { "spans" };
    format!("{} {noun} rejected: {}", refused.len(), parts.join("; "))
}

/// A refused request: the status and headers `/v1/events` would answer, with a
/// `google.rpc.Status` body in the request's encoding.
fn refusal(e: &RequestError, encoding: Encoding) -> Response<Full<Bytes>> {
    let mut r = error_response(e);
    *r.body_mut() = Full::new(Bytes::from(wire::status_body(encoding, e)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    r
}
