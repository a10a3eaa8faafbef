//! The usage event: a CloudEvents 1.0 JSON object in structured mode (DESIGN.md section 2).
//!
//! [`EventView::parse`] is the single place an event's envelope is validated; it borrows the
//! strings from the message bytes (the aggregator's hot path keeps them there), reading plain
//! input with the one-pass scanner in `envelope.rs` and anything else with serde (the
//! reference the scanner is tested against), and
//! [`UsageEvent::parse`] is the same check returning owned values. It checks the envelope
//! only; what a meter reads out of `data` is checked by [`crate::meter`]. It never converts a
//! number through a float: `data` is kept as raw JSON text.
//!
//! One extension attribute is read: `holdid`, the spend hold (an allowed authorize request)
//! the event's usage settles. It is optional, and validated like an event id.

use std::borrow::Cow;

use chrono::DateTime;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::data::CowStr;
use crate::ids::{AgentId, CustomerId, EventId, IdError};
use crate::reason::Reason;

/// Why an event envelope was refused; [`EventError::reason`] maps it to a public code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is {len} bytes, at most {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("event is not a JSON object: {detail}")]
    NotJson { detail: String },
    #[error("attribute `{field}` is missing")]
    Missing { field: &'static str },
    #[error("attribute `specversion` is {found:?}, expected \"1.0\"")]
    SpecVersion { found: String },
    #[error("attribute `{field}`: {source}")]
    BadId {
        field: &'static str,
        source: IdError,
    },
    #[error("attribute `type` must be 1 to 128 printable characters")]
    BadType,
    #[error("attribute `time` is {found:?}, expected an RFC 3339 timestamp")]
    BadTime { found: String },
    #[error("attribute `data` must be a JSON object")]
    DataNotObject,
    #[error("attribute `{field}` is {found:?} but the NATS subject says {expected:?}")]
    SubjectMismatch {
        field: &'static str,
        found: String,
        expected: String,
    },
}

impl EventError {
    /// The public reason code for this error.
    pub fn reason(&self) -> Reason {
        match self {
            EventError::TooLarge { .. } => Reason::TooLarge,
            EventError::SubjectMismatch { .. } => Reason::SubjectMismatch,
            _ => Reason::Malformed,
        }
    }

    /// The offending CloudEvents attribute, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            EventError::Missing { field } | EventError::BadId { field, .. } => Some(field),
            EventError::SubjectMismatch { field, .. } => Some(field),
            EventError::SpecVersion { .. } => Some("specversion"),
            EventError::BadType => Some("type"),
            EventError::BadTime { .. } => Some("time"),
            EventError::DataNotObject => Some("data"),
            EventError::TooLarge { .. } | EventError::NotJson { .. } => None,
        }
    }
}

/// A validated usage event.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub id: EventId,
    /// CloudEvent `subject`.
    pub customer: CustomerId,
    /// CloudEvent `source`.
    pub agent: AgentId,
    /// CloudEvent `type`, what meters select on.
    pub event_type: String,
    /// Event time in milliseconds since the Unix epoch, UTC (sub-millisecond digits dropped).
    pub time_ms: i64,
    /// The `data` object as raw JSON text (`{}` when absent).
    pub data: Box<RawValue>,
    /// Extension `holdid`: the spend hold this usage settles.
    pub hold_id: Option<EventId>,
}

/// A validated usage event borrowing from the bytes it was parsed from: strings are
/// `Cow::Borrowed` unless the JSON wrote them with escapes. Same rules as [`UsageEvent`].
#[derive(Debug, Clone)]
pub struct EventView<'a> {
    pub id: Cow<'a, str>,
    /// CloudEvent `subject`.
    pub customer: Cow<'a, str>,
    /// CloudEvent `source`.
    pub agent: Cow<'a, str>,
    /// CloudEvent `type`.
    pub event_type: Cow<'a, str>,
    /// Event time in milliseconds since the Unix epoch, UTC (sub-millisecond digits dropped).
    pub time_ms: i64,
    /// The `data` object as raw JSON text (`{}` when absent).
    pub data: &'a RawValue,
    /// Extension `holdid`: the spend hold this usage settles.
    pub hold_id: Option<Cow<'a, str>>,
}

/// The envelope's attributes, borrowed from the input unless escaped ([`CowStr`]: serde's
/// `Cow<str>` inside an `Option` would always copy). Filled by [`crate::envelope::scan`] or,
/// for anything it leaves alone, by serde (the reference path).
#[derive(Deserialize, Default)]
pub(crate) struct Envelope<'a> {
    #[serde(borrow)]
    pub(crate) specversion: Option<CowStr<'a>>,
    #[serde(borrow)]
    pub(crate) id: Option<CowStr<'a>>,
    #[serde(borrow)]
    pub(crate) source: Option<CowStr<'a>>,
    #[serde(borrow)]
    pub(crate) subject: Option<CowStr<'a>>,
    #[serde(borrow, rename = "type")]
    pub(crate) event_type: Option<CowStr<'a>>,
    #[serde(borrow)]
    pub(crate) time: Option<CowStr<'a>>,
    #[serde(borrow)]
    pub(crate) data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(crate) holdid: Option<CowStr<'a>>,
}

fn required<'a>(v: Option<CowStr<'a>>, field: &'static str) -> Result<Cow<'a, str>, EventError> {
    v.map(|s| s.0).ok_or(EventError::Missing { field })
}

fn validate_id<'a>(
    v: Option<CowStr<'a>>,
    field: &'static str,
    validate: fn(&str) -> Result<(), IdError>,
) -> Result<Cow<'a, str>, EventError> {
    let v = required(v, field)?;
    validate(&v).map_err(|source| EventError::BadId { field, source })?;
    Ok(v)
}

fn reference_envelope(bytes: &[u8]) -> Result<Envelope<'_>, EventError> {
    serde_json::from_slice(bytes).map_err(|e| EventError::NotJson {
        detail: e.to_string(),
    })
}

impl<'a> EventView<'a> {
    /// Parses and validates one structured-mode CloudEvent of at most `max_bytes` bytes.
    pub fn parse(bytes: &'a [u8], max_bytes: usize) -> Result<EventView<'a>, EventError> {
        if bytes.len() > max_bytes {
            return Err(EventError::TooLarge {
                len: bytes.len(),
                max: max_bytes,
            });
        }
        let env = match crate::envelope::scan(bytes) {
            Some(env) => env,
            None => reference_envelope(bytes)?,
        };
        Self::validate(env)
    }

    /// The same check through serde only: the reference the fast path is tested against.
    #[cfg(test)]
    pub(crate) fn parse_reference(
        bytes: &'a [u8],
        max_bytes: usize,
    ) -> Result<EventView<'a>, EventError> {
        if bytes.len() > max_bytes {
            return Err(EventError::TooLarge {
                len: bytes.len(),
                max: max_bytes,
            });
        }
        Self::validate(reference_envelope(bytes)?)
    }

    fn validate(env: Envelope<'a>) -> Result<EventView<'a>, EventError> {
        let spec = required(env.specversion, "specversion")?;
        if spec != "1.0" {
            return Err(EventError::SpecVersion {
                found: spec.into_owned(),
            });
        }
        let id = validate_id(env.id, "id", EventId::validate)?;
        let customer = validate_id(env.subject, "subject", CustomerId::validate)?;
        let agent = validate_id(env.source, "source", AgentId::validate)?;
        let event_type = required(env.event_type, "type")?;
        // every accepted character is ASCII, so bytes are characters
        let type_ok = !event_type.is_empty()
            && event_type.len() <= UsageEvent::TYPE_MAX_LEN
            && event_type.bytes().all(|b| b.is_ascii_graphic());
        if !type_ok {
            return Err(EventError::BadType);
        }
        let time = required(env.time, "time")?;
        let time_ms = DateTime::parse_from_rfc3339(&time)
            .map_err(|_| EventError::BadTime {
                found: time.to_string(),
            })?
            .timestamp_millis();
        let data = match env.data {
            None => serde_json::from_str::<&'static RawValue>("{}").expect("literal is valid JSON"),
            Some(raw) if raw.get().trim_start().starts_with('{') => raw,
            Some(_) => return Err(EventError::DataNotObject),
        };
        let hold_id = match env.holdid {
            None => None,
            Some(h) => Some(validate_id(Some(h), "holdid", EventId::validate)?),
        };
        Ok(EventView {
            id,
            customer,
            agent,
            event_type,
            time_ms,
            data,
            hold_id,
        })
    }

    /// The same event owning its values.
    pub fn into_owned(self) -> UsageEvent {
        UsageEvent {
            id: EventId::validated(self.id.into_owned()),
            customer: CustomerId::validated(self.customer.into_owned()),
            agent: AgentId::validated(self.agent.into_owned()),
            event_type: self.event_type.into_owned(),
            time_ms: self.time_ms,
            data: self.data.to_owned(),
            hold_id: self.hold_id.map(|h| EventId::validated(h.into_owned())),
        }
    }

    /// Checks the body against the NATS subject's customer and agent tokens.
    pub fn check_subject(&self, customer: &str, agent: &str) -> Result<(), EventError> {
        check_subject(&self.customer, &self.agent, customer, agent)
    }
}

fn check_subject(
    found_customer: &str,
    found_agent: &str,
    customer: &str,
    agent: &str,
) -> Result<(), EventError> {
    if found_customer != customer {
        return Err(EventError::SubjectMismatch {
            field: "subject",
            found: found_customer.to_owned(),
            expected: customer.to_owned(),
        });
    }
    if found_agent != agent {
        return Err(EventError::SubjectMismatch {
            field: "source",
            found: found_agent.to_owned(),
            expected: agent.to_owned(),
        });
    }
    Ok(())
}

impl UsageEvent {
    /// The largest `type` accepted, in characters.
    pub const TYPE_MAX_LEN: usize = 128;

    /// Parses and validates one structured-mode CloudEvent of at most `max_bytes` bytes.
    pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<UsageEvent, EventError> {
        EventView::parse(bytes, max_bytes).map(EventView::into_owned)
    }

    /// Checks the body against the NATS subject's customer and agent tokens.
    pub fn check_subject(&self, customer: &str, agent: &str) -> Result<(), EventError> {
        check_subject(self.customer.as_str(), self.agent.as_str(), customer, agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"specversion":"1.0","id":"e1","source":"bot-7","subject":"acme",
        "type":"llm.tokens","time":"2026-11-26T21:00:00.123Z",
        "data":{"tokens":1234,"model":"gpt-4o","kind":"output"}}"#;

    #[test]
    fn parses_the_contract_example() {
        let e = UsageEvent::parse(GOOD.as_bytes(), 4096).unwrap();
        assert_eq!(e.id.as_str(), "e1");
        assert_eq!(e.customer.as_str(), "acme");
        assert_eq!(e.agent.as_str(), "bot-7");
        assert_eq!(e.event_type, "llm.tokens");
        assert_eq!(e.time_ms, 1_795_726_800_123);
        assert!(e.data.get().contains("gpt-4o"));
    }

    #[test]
    fn the_view_borrows_unescaped_attributes_from_the_input() {
        let v = EventView::parse(GOOD.as_bytes(), 4096).unwrap();
        for s in [&v.id, &v.customer, &v.agent, &v.event_type] {
            assert!(matches!(s, Cow::Borrowed(_)), "{s} was copied");
        }
        let escaped = GOOD.replace("\"e1\"", "\"e\\u0031\"");
        let v = EventView::parse(escaped.as_bytes(), 4096).unwrap();
        assert_eq!(v.id, "e1");
        assert!(matches!(v.id, Cow::Owned(_)));
    }

    #[test]
    fn the_hold_extension_is_optional_read_and_validated_on_both_paths() {
        let with = GOOD.replace("\"id\":\"e1\",", "\"id\":\"e1\",\"holdid\":\"h-42\",");
        let bad = with.replace("h-42", "h 42");
        let twice = with.replace("\"holdid\":\"h-42\",", "\"holdid\":\"a\",\"holdid\":\"b\",");
        for parse in [EventView::parse, EventView::parse_reference] {
            let v = parse(with.as_bytes(), 4096).unwrap();
            assert_eq!(v.hold_id.as_deref(), Some("h-42"));
            assert_eq!(parse(GOOD.as_bytes(), 4096).unwrap().hold_id, None);
            assert_eq!(
                parse(bad.as_bytes(), 4096).unwrap_err().field(),
                Some("holdid")
            );
            assert!(
                parse(twice.as_bytes(), 4096).is_err(),
                "a repeated holdid is refused"
            );
        }
        let owned = UsageEvent::parse(with.as_bytes(), 4096).unwrap();
        assert_eq!(owned.hold_id.as_ref().map(EventId::as_str), Some("h-42"));
    }

    #[test]
    fn time_offsets_are_normalised_to_utc() {
        let body = GOOD.replace("2026-11-26T21:00:00.123Z", "2026-11-26T22:00:00.123+01:00");
        assert_eq!(
            UsageEvent::parse(body.as_bytes(), 4096).unwrap().time_ms,
            1_795_726_800_123
        );
    }

    #[test]
    fn each_bad_attribute_is_named() {
        let cases = [
            (GOOD.replace("\"1.0\"", "\"0.3\""), Some("specversion")),
            (GOOD.replace("\"id\":\"e1\",", ""), Some("id")),
            (GOOD.replace("\"acme\"", "\"ac me\""), Some("subject")),
            (GOOD.replace("\"bot-7\"", "\"bot.7\""), Some("source")),
            (
                GOOD.replace("2026-11-26T21:00:00.123Z", "yesterday"),
                Some("time"),
            ),
            (GOOD.replace("\"llm.tokens\"", "\"\""), Some("type")),
            (
                GOOD.replace(r#"{"tokens":1234,"model":"gpt-4o","kind":"output"}"#, "[1]"),
                Some("data"),
            ),
            ("not json".to_owned(), None),
        ];
        for (body, field) in cases {
            let err = UsageEvent::parse(body.as_bytes(), 4096).unwrap_err();
            assert_eq!(err.field(), field, "{body}: {err}");
            assert_eq!(err.reason(), Reason::Malformed);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = UsageEvent::parse(&bytes, 4096);
        }

        #[test]
        fn mutated_events_never_panic(cut in 0usize..400, insert in "[\\PC]{0,8}") {
            let mut text = GOOD.to_owned();
            let at = (0..=cut.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.insert_str(at, &insert);
            if let Ok(e) = UsageEvent::parse(text.as_bytes(), 4096) {
                let _ = e.check_subject("acme", "bot-7");
            }
        }
    }

    /// The fast path and the serde reference agree on the outcome, the error and the values.
    fn assert_same_as_reference(bytes: &[u8]) {
        let fast = EventView::parse(bytes, 4096);
        let reference = EventView::parse_reference(bytes, 4096);
        match (&fast, &reference) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    (&a.id, &a.customer, &a.agent, &a.event_type, a.time_ms),
                    (&b.id, &b.customer, &b.agent, &b.event_type, b.time_ms)
                );
                assert_eq!(a.data.get(), b.data.get());
                assert_eq!(a.data.get().as_ptr(), b.data.get().as_ptr());
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!(
                "{:?}: fast {fast:?} reference {reference:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    /// A JSON value for an attribute: plain, escaped, unicode, null, number, object, odd.
    fn attr_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            "[a-z0-9_-]{0,12}".prop_map(|v| format!("\"{v}\"")),
            Just("\"1.0\"".to_owned()),
            Just("\"2026-11-26T21:00:00.123Z\"".to_owned()),
            Just("\"e\\u0031\"".to_owned()),
            Just("\"a\\\"b\"".to_owned()),
            Just("\"\\ud800\"".to_owned()),
            "\\PC{0,6}".prop_map(|v| serde_json::to_string(&v).unwrap()),
            Just("null".to_owned()),
            Just("1.0".to_owned()),
            Just("-0.5e+3".to_owned()),
            Just("012".to_owned()),
            Just("true".to_owned()),
            Just("{\"a\":[1,{\"b\":\"c\"}],\"t\":\"12\"}".to_owned()),
            Just("[]".to_owned()),
            Just("\"tab\there\"".to_owned()),
        ]
    }

    fn data_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just(r#"{"tokens":1234,"model":"gpt-4o","kind":"output"}"#.to_owned()),
            Just(r#"{"tokens":"1234.50","n":{"deep":[1,2,{"x":null}]},"e":-1.5E-7}"#.to_owned()),
            Just(r#" { "k" : "caf\u00e9" , "u":"日本" } "#.to_owned()),
            Just("{}".to_owned()),
            Just("null".to_owned()),
            Just("[1]".to_owned()),
            Just("\"x\"".to_owned()),
            Just("{\"a\":01}".to_owned()),
            Just("{\"a\":1.}".to_owned()),
            Just("{\"a\":[1,]}".to_owned()),
            Just(format!("{}1{}", "[".repeat(130), "]".repeat(130))),
            Just(format!("{{\"a\":{}1{}}}", "[".repeat(70), "]".repeat(70))),
            attr_value(),
        ]
    }

    fn event_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let keys = [
            "specversion",
            "id",
            "source",
            "subject",
            "type",
            "time",
            "data",
            "datacontenttype",
            "traceparent",
            "i\\u0064",
        ];
        let member = (0..keys.len(), attr_value(), data_value()).prop_map(move |(k, v, d)| {
            let value = if keys[k] == "data" { d } else { v };
            format!("\"{}\":{value}", keys[k])
        });
        let good = [
            r#""specversion":"1.0""#,
            r#""id":"e1""#,
            r#""source":"bot-7""#,
            r#""subject":"acme""#,
            r#""type":"llm.tokens""#,
            r#""time":"2026-11-26T21:00:00.123Z""#,
            r#""data":{"tokens":1234,"model":"gpt-4o","kind":"output"}"#,
        ];
        (
            proptest::sample::subsequence(good.to_vec(), 0..=good.len()),
            proptest::collection::vec((member, 0..8usize), 0..3),
            prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\u{a0}")],
        )
            .prop_map(|(mut members, extra, ws)| {
                let mut members: Vec<String> = members.drain(..).map(str::to_owned).collect();
                for (m, at) in extra {
                    members.insert(at.min(members.len()), m);
                }
                format!("{ws}{{{ws}{}{ws}}}{ws}", members.join(&format!("{ws},")))
            })
    }

    /// Plain, valid events (attributes in any order, JSON whitespace, plain data): inputs the
    /// scanner must read itself rather than defer.
    fn plain_event_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            "[a-z0-9-]{1,12}",
            0u64..10_000_000,
            "[a-z0-9.-]{1,10}",
            prop_oneof![Just("input"), Just("output")],
            prop_oneof![Just(""), Just(" "), Just("\n\t"), Just("\r\n  ")],
            any::<bool>(),
        )
            .prop_flat_map(|(id, tokens, model, kind, ws, extra)| {
                let mut members = vec![
                    r#""specversion":"1.0""#.to_owned(),
                    format!(r#""id":"{id}""#),
                    r#""source":"bot-7""#.to_owned(),
                    r#""subject":"acme""#.to_owned(),
                    r#""type":"llm.tokens""#.to_owned(),
                    r#""time":"2026-11-26T21:00:00.123Z""#.to_owned(),
                    format!(
                        r#""data":{{{ws}"tokens":{ws}{tokens},"model":"{model}",{ws}"kind":"{kind}","n":{{"x":[1,-2.5e3,true,null]}}}}"#
                    ),
                ];
                if extra {
                    members.push(r#""traceparent":"00-abc-01""#.to_owned());
                }
                Just(members).prop_shuffle().prop_map(move |m| {
                    format!("{ws}{{{ws}{}{ws}}}{ws}", m.join(&format!("{ws},{ws}")))
                })
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn plain_events_take_the_fast_path_and_agree_with_serde(text in plain_event_text()) {
            proptest::prop_assert!(crate::envelope::scan(text.as_bytes()).is_some(), "deferred: {}", text);
            proptest::prop_assert!(EventView::parse(text.as_bytes(), 4096).is_ok(), "refused: {}", text);
            assert_same_as_reference(text.as_bytes());
        }

        #[test]
        fn the_fast_path_agrees_with_serde_on_generated_events(text in event_text()) {
            assert_same_as_reference(text.as_bytes());
        }

        #[test]
        fn the_fast_path_agrees_with_serde_on_mutated_events(
            text in event_text(),
            cut in 0usize..600,
            op in 0u8..4,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut bytes = text.into_bytes();
            let at = cut.min(bytes.len());
            match op {
                0 => bytes.truncate(at),
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => bytes[at] = byte,
                _ => { bytes.insert(at, 0xc3); }
            }
            assert_same_as_reference(&bytes);
        }

        #[test]
        fn the_fast_path_agrees_with_serde_on_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)
        ) {
            assert_same_as_reference(&bytes);
        }
    }

    #[test]
    fn the_fast_path_agrees_with_serde_on_known_cases() {
        let cases = [
            GOOD.to_owned(),
            GOOD.replace("\"id\":\"e1\",", "\"id\":\"e1\",\"id\":\"e2\","),
            GOOD.replace("\"id\":\"e1\",", "\"id\":null,\"id\":\"e2\","),
            GOOD.replace("\"id\":\"e1\",", "\"x\":1,\"x\":2,\"id\":\"e1\","),
            GOOD.replace("\"e1\"", "1"),
            GOOD.replace("\"e1\"", "null"),
            GOOD.replace("\"data\":", "\"data\":null,\"d\":"),
            GOOD.replace("}}", "},\"data\":{}}"),
            GOOD.replace("}}", "}} x"),
            GOOD.replace("}}", "},}"),
            GOOD.replace("\"acme\"", "\"acmé\""),
            GOOD[..GOOD.len() - 1].to_owned(),
            format!("[{GOOD}]"),
            "[\"1.0\",\"e1\",\"bot\",\"acme\",\"t\",\"2026-11-26T21:00:00Z\"]".to_owned(),
            "{}".to_owned(),
            String::new(),
        ];
        for case in cases {
            assert_same_as_reference(case.as_bytes());
        }
        assert_same_as_reference(b"{\"id\":\"\xff\"}");
        assert!(
            crate::envelope::scan(GOOD.as_bytes()).is_some(),
            "the fast path is taken"
        );
        let escaped = GOOD.replace("\"e1\"", "\"e\\u0031\"");
        assert!(
            crate::envelope::scan(escaped.as_bytes()).is_none(),
            "escapes go to serde"
        );
    }

    #[test]
    fn oversized_events_are_refused_before_parsing() {
        let err = UsageEvent::parse(GOOD.as_bytes(), 10).unwrap_err();
        assert_eq!(err.reason(), Reason::TooLarge);
    }

    #[test]
    fn subject_tokens_must_match_the_body() {
        let e = UsageEvent::parse(GOOD.as_bytes(), 4096).unwrap();
        assert!(e.check_subject("acme", "bot-7").is_ok());
        let err = e.check_subject("evil", "bot-7").unwrap_err();
        assert_eq!(err.reason(), Reason::SubjectMismatch);
        assert_eq!(err.field(), Some("subject"));
        assert_eq!(
            e.check_subject("acme", "bot-8").unwrap_err().field(),
            Some("source")
        );
    }
}
