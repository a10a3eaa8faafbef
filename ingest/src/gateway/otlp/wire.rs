//! OTLP/HTTP on the wire, without I/O: the two encodings (binary protobuf and JSON, chosen by
//! `Content-Type`), decoding an `ExportTraceServiceRequest`, and encoding the answers: an
//! `ExportTraceServiceResponse` (with `partial_success` when spans were rejected) or, for a
//! refused request, a `google.rpc.Status`, each in the request's encoding as the OTLP
//! specification asks.
//!
//! It never decides what a span means: that is [`super::genai`].

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::super::error::RequestError;

/// Binary protobuf (OTLP/HTTP's default).
pub const PROTOBUF: &str = "application/x-protobuf";
/// OTLP/JSON.
pub const JSON: &str = "application/json";

/// How a request (and so its answer) is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding named by `Content-Type` (parameters ignored); anything else is 415.
    pub fn of(content_type: Option<&str>) -> Result<Encoding, RequestError> {
        let raw = content_type.unwrap_or("");
        match super::super::decode::media_type(raw).as_str() {
            PROTOBUF => Ok(Encoding::Protobuf),
            JSON => Ok(Encoding::Json),
            _ => Err(RequestError::UnsupportedOtlpMediaType {
                found: raw.chars().take(100).collect(),
            }),
        }
    }

    /// The `Content-Type` of an answer.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

/// Decodes an export request; a body that is not one is `malformed_otlp` (400).
pub fn decode_request(
    body: &[u8],
    encoding: Encoding,
) -> Result<ExportTraceServiceRequest, RequestError> {
    let malformed = |detail: String| RequestError::MalformedOtlp { detail };
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|e| {
            malformed(format!(
                "not an OTLP protobuf ExportTraceServiceRequest: {e}"
            ))
        }),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| malformed(format!("not an OTLP/JSON ExportTraceServiceRequest: {e}"))),
    }
}

/// The answer to an export: `partial_success` only when spans were rejected.
pub fn export_response(encoding: Encoding, rejected_spans: usize, message: &str) -> Vec<u8> {
    let partial = (rejected_spans > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: i64::try_from(rejected_spans).unwrap_or(i64::MAX),
        error_message: message.to_owned(),
    });
    match encoding {
        Encoding::Protobuf => ExportTraceServiceResponse {
            partial_success: partial,
        }
        .encode_to_vec(),
        // proto3 JSON: an unset message is left out, an int64 is a string
        Encoding::Json => {
            let body = match partial {
                None => serde_json::json!({}),
                Some(p) => serde_json::json!({"partialSuccess": {
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                }}),
            };
            serde_json::to_vec(&body).expect("a JSON value serializes")
        }
    }
}

/// `google.rpc.Status`, the body of a refused OTLP request (details are never sent).
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The gRPC status code closest to a refusal's HTTP status.
fn grpc_code(e: &RequestError) -> i32 {
    match e.status().as_u16() {
        400 | 413 | 415 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        404 => 5,             // NOT_FOUND
        405 => 12,            // UNIMPLEMENTED
        408 => 4,             // DEADLINE_EXCEEDED
        429 => 8,             // RESOURCE_EXHAUSTED
        503 => 14,            // UNAVAILABLE
        _ => 2,               // UNKNOWN
    }
}

/// The body of a refused request: its stable code first in the message.
pub fn status_body(encoding: Encoding, e: &RequestError) -> Vec<u8> {
    let status = Status {
        code: grpc_code(e),
        message: format!("{}: {e}", e.code()),
    };
    match encoding {
        Encoding::Protobuf => status.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&serde_json::json!({
            "code": status.code,
            "message": status.message,
        }))
        .expect("a JSON value serializes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_choose_the_encoding() {
        assert_eq!(
            Encoding::of(Some("application/x-protobuf")).unwrap(),
            Encoding::Protobuf
        );
        assert_eq!(
            Encoding::of(Some("Application/JSON; charset=utf-8")).unwrap(),
            Encoding::Json
        );
        let e = Encoding::of(Some("text/plain")).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.code()),
            (415, "unsupported_media_type")
        );
        assert!(Encoding::of(None).is_err());
    }

    #[test]
    fn hostile_bodies_are_malformed_never_a_panic() {
        for body in [&b"\xff\xff\xff"[..], b"{", b"[]", b"{\"resourceSpans\":3}"] {
            for enc in [Encoding::Protobuf, Encoding::Json] {
                if let Err(e) = decode_request(body, enc) {
                    assert_eq!(e.code(), "malformed_otlp");
                }
            }
        }
        assert!(decode_request(b"{\"resourceSpans\":3}", Encoding::Json).is_err());
        // an empty request is valid in both encodings
        assert!(decode_request(b"", Encoding::Protobuf)
            .unwrap()
            .resource_spans
            .is_empty());
        assert!(decode_request(b"{}", Encoding::Json)
            .unwrap()
            .resource_spans
            .is_empty());
    }

    #[test]
    fn answers_set_partial_success_only_for_rejections() {
        assert!(export_response(Encoding::Protobuf, 0, "").is_empty());
        assert_eq!(export_response(Encoding::Json, 0, ""), b"{}");
        let bin = export_response(Encoding::Protobuf, 2, "subject_mismatch");
        let back = ExportTraceServiceResponse::decode(&bin[..]).unwrap();
        assert_eq!(back.partial_success.unwrap().rejected_spans, 2);
        let json: serde_json::Value =
            serde_json::from_slice(&export_response(Encoding::Json, 2, "why")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"partialSuccess": {"rejectedSpans": "2", "errorMessage": "why"}})
        );
    }

    #[test]
    fn refusals_are_statuses_naming_the_stable_code() {
        let bin = status_body(Encoding::Protobuf, &RequestError::InvalidKey);
        let status = Status::decode(&bin[..]).unwrap();
        assert_eq!(status.code, 16);
        assert!(
            status.message.starts_with("invalid_key: "),
            "{}",
            status.message
        );
        let json: serde_json::Value =
            serde_json::from_slice(&status_body(Encoding::Json, &RequestError::MissingKey))
                .unwrap();
        assert_eq!(json["code"], 16);
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_decoding_or_conversion_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let scope = crate::gateway::auth::Scope {
                customer: tally_domain::CustomerId::new("acme").unwrap(),
                agents: Vec::new(),
            };
            for encoding in [Encoding::Protobuf, Encoding::Json] {
                if let Ok(request) = decode_request(&bytes, encoding) {
                    let _ = super::super::genai::convert(&request, &scope);
                }
            }
        }
    }
}
