//! Decoding a request body into events, without I/O: the media type, gzip (bounded), the
//! batch array (bounded), and each event's shape limits before the domain's
//! [`UsageEvent::parse`] validates the envelope. Every function here takes hostile bytes and
//! must return an error, never panic (property-tested below and in `tests/decode_props.rs`).
//!
//! It never decides who may send what: that is [`super::auth`].

use std::io::Read;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tally_domain::{EventError, UsageEvent};

use super::error::RequestError;

/// The media type of a single event.
pub const SINGLE: &str = "application/cloudevents+json";
/// The media type of a batch.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// The limits applied while decoding (from `[ingest]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub body_max_bytes: usize,
    pub event_max_bytes: usize,
    pub batch_max_events: usize,
    pub depth_max: usize,
    pub string_max_bytes: usize,
}

/// One event or a batch of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Single,
    Batch,
}

/// The shape named by `Content-Type` (parameters such as `; charset=utf-8` ignored; plain
/// `application/json` is read as a single event).
pub fn shape(content_type: Option<&str>) -> Result<Shape, RequestError> {
    let raw = content_type.unwrap_or("");
    match media_type(raw).as_str() {
        SINGLE | "application/json" => Ok(Shape::Single),
        BATCH => Ok(Shape::Batch),
        _ => Err(RequestError::UnsupportedMediaType {
            found: raw.chars().take(100).collect(),
        }),
    }
}

/// The media type of a `Content-Type` value, lower-case, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether `Content-Encoding` asks for gzip decoding.
pub fn is_gzip(content_encoding: Option<&str>) -> Result<bool, RequestError> {
    match content_encoding.map(|e| e.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(e) if e.is_empty() || e == "identity" => Ok(false),
        Some(e) if e == "gzip" || e == "x-gzip" => Ok(true),
        Some(e) => Err(RequestError::UnsupportedEncoding {
            found: e.chars().take(100).collect(),
        }),
    }
}

/// Decompresses `body`, refusing output above `max_bytes` (a gzip bomb stops there).
pub fn gunzip(body: &[u8], max_bytes: usize) -> Result<Vec<u8>, RequestError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max_bytes));
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    flate2::read::GzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| RequestError::MalformedGzip {
            detail: e.to_string(),
        })?;
    if out.len() > max_bytes {
        return Err(RequestError::BodyTooLarge { max: max_bytes });
    }
    Ok(out)
}

const TOO_MANY: &str = "tally: too many events";

struct BoundedSeq(usize);

impl<'de> Visitor<'de> for BoundedSeq {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a JSON array of CloudEvents")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
        while let Some(e) = seq.next_element::<&'de RawValue>()? {
            if out.len() == self.0 {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            out.push(e);
        }
        Ok(out)
    }
}

/// Splits a batch body into its raw events, refusing more than `max_events` as soon as the
/// next one starts (the rest is not read).
pub fn split_batch(body: &[u8], max_events: usize) -> Result<Vec<&RawValue>, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let events = de
        .deserialize_seq(BoundedSeq(max_events))
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| {
            if e.to_string().starts_with(TOO_MANY) {
                RequestError::BatchTooLarge { max: max_events }
            } else {
                RequestError::MalformedBatch {
                    detail: e.to_string(),
                }
            }
        })?;
    if events.is_empty() {
        return Err(RequestError::EmptyBatch);
    }
    Ok(events)
}

/// An event refused before or by the envelope parser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventRefusal {
    #[error("{0} (settings ingest.depth_max, ingest.string_max_bytes)")]
    Shape(#[from] ShapeError),
    #[error(transparent)]
    Envelope(#[from] EventError),
}

impl EventRefusal {
    /// The public reason code.
    pub fn code(&self) -> &'static str {
        match self {
            EventRefusal::Envelope(e) => e.reason().code(),
            EventRefusal::Shape(_) => tally_domain::Reason::Malformed.code(),
        }
    }

    /// The offending top-level attribute, when known.
    pub fn field(&self) -> Option<String> {
        match self {
            EventRefusal::Envelope(e) => e.field().map(str::to_owned),
            EventRefusal::Shape(e) => e.field().map(str::to_owned),
        }
    }
}

pub use tally_domain::shape::check_shape;
use tally_domain::shape::ShapeError;

/// Validates one raw event: size, shape limits, then the CloudEvents envelope.
pub fn decode_event(raw: &[u8], limits: &Limits) -> Result<UsageEvent, EventRefusal> {
    if raw.len() > limits.event_max_bytes {
        return Err(EventError::TooLarge {
            len: raw.len(),
            max: limits.event_max_bytes,
        }
        .into());
    }
    check_shape(raw, limits.depth_max, limits.string_max_bytes)?;
    Ok(UsageEvent::parse(raw, limits.event_max_bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"specversion":"1.0","id":"e1","source":"bot","subject":"acme","type":"llm.tokens","time":"2026-11-26T21:00:00Z","data":{"tokens":5}}"#;

    fn limits() -> Limits {
        Limits {
            body_max_bytes: 1 << 20,
            event_max_bytes: 4096,
            batch_max_events: 3,
            depth_max: 4,
            string_max_bytes: 32,
        }
    }

    #[test]
    fn media_types_choose_the_shape() {
        assert_eq!(shape(Some(SINGLE)).unwrap(), Shape::Single);
        assert_eq!(
            shape(Some("Application/CloudEvents-Batch+JSON; charset=utf-8")).unwrap(),
            Shape::Batch
        );
        assert_eq!(
            shape(Some("text/plain")).unwrap_err().code(),
            "unsupported_media_type"
        );
        assert_eq!(shape(None).unwrap_err().code(), "unsupported_media_type");
    }

    #[test]
    fn batches_are_bounded_and_non_empty() {
        let three = format!("[{EVENT},{EVENT},{EVENT}]");
        assert_eq!(split_batch(three.as_bytes(), 3).unwrap().len(), 3);
        assert_eq!(
            split_batch(three.as_bytes(), 2).unwrap_err(),
            RequestError::BatchTooLarge { max: 2 }
        );
        assert_eq!(split_batch(b"[]", 3).unwrap_err(), RequestError::EmptyBatch);
        assert_eq!(
            split_batch(EVENT.as_bytes(), 3).unwrap_err().code(),
            "malformed_batch"
        );
        assert_eq!(
            split_batch(b"[1] x", 3).unwrap_err().code(),
            "malformed_batch"
        );
    }

    #[test]
    fn gzip_output_is_bounded() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b' '; 100_000]).unwrap();
        let bomb = enc.finish().unwrap();
        assert_eq!(
            gunzip(&bomb, 1000).unwrap_err(),
            RequestError::BodyTooLarge { max: 1000 }
        );
        assert_eq!(gunzip(&bomb, 100_000).unwrap().len(), 100_000);
        assert_eq!(gunzip(b"nope", 10).unwrap_err().code(), "malformed_gzip");
    }

    #[test]
    fn deep_data_is_refused_naming_the_attribute() {
        let deep = EVENT.replace(r#"{"tokens":5}"#, r#"{"a":{"b":{"c":{"d":1}}}}"#);
        let err = decode_event(deep.as_bytes(), &limits()).unwrap_err();
        assert_eq!(
            (err.code(), err.field().as_deref()),
            ("malformed", Some("data"))
        );
        let ok = EVENT.replace(r#"{"tokens":5}"#, r#"{"a":{"b":[1]}}"#);
        decode_event(ok.as_bytes(), &limits()).unwrap();
    }

    #[test]
    fn long_strings_are_refused_naming_the_attribute() {
        let long = EVENT.replace("llm.tokens", &"t".repeat(33));
        let err = decode_event(long.as_bytes(), &limits()).unwrap_err();
        assert_eq!(
            (err.code(), err.field().as_deref()),
            ("malformed", Some("type"))
        );
        let escaped = EVENT.replace(
            "llm.tokens",
            &format!("{}{}", "t".repeat(20), r#"\"\"\"\"\"\"\""#),
        );
        assert_eq!(
            decode_event(escaped.as_bytes(), &limits())
                .unwrap_err()
                .field()
                .as_deref(),
            Some("type")
        );
    }

    #[test]
    fn oversized_events_are_too_large() {
        let mut l = limits();
        l.event_max_bytes = 20;
        assert_eq!(
            decode_event(EVENT.as_bytes(), &l).unwrap_err().code(),
            "too_large"
        );
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_the_decoder_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = check_shape(&bytes, 4, 16);
            let _ = decode_event(&bytes, &limits());
            let _ = split_batch(&bytes, 3);
            let _ = gunzip(&bytes, 1024);
        }
    }
}
