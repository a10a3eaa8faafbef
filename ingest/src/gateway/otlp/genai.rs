//! GenAI spans to usage events, without I/O: which spans carry usage, whose usage it is, and
//! the `llm.tokens` CloudEvents that meter it (one per token kind with a non-zero count).
//!
//! Rules (docs/INGEST.md, "`POST /v1/traces`"):
//! - A span carries usage when it has any token attribute of [`INPUT_ATTRS`],
//!   [`OUTPUT_ATTRS`], [`CACHE_READ_ATTRS`] or [`CACHE_WRITE_ATTRS`]; other spans are ignored.
//! - Customer: attribute `tally.customer` of the span, else of the resource; required.
//!   Agent: `tally.agent` of the span, else of the resource, else the resource's
//!   `service.name`. Both must be in the API key's scope.
//! - Model: `gen_ai.response.model` (the model that answered), else `gen_ai.request.model`.
//! - Kinds as the SDKs name them: `input` (prompt tokens not read from or written to a cache),
//!   `output`, `cached` (read from a cache), `cache_write`. The conventions count cache
//!   tokens inside `gen_ai.usage.input_tokens`, so they are subtracted from it; when they
//!   exceed it, the instrumentation counted them apart and the input is taken as it is.
//! - Time: the span's end. Id: `otlp-<trace id>-<span id>-<kind>` (hex), so an export sent
//!   again yields the same events and counts once.
//!
//! It does not publish, and trusts nothing: every refusal is a [`SpanRefusal`] with a stable
//! code, never a panic.

use chrono::{DateTime, SecondsFormat};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use tally_domain::{AgentId, CustomerId};

use super::super::auth::Scope;

/// The customer of a span's usage (span attribute, else resource attribute).
pub const CUSTOMER_ATTR: &str = "tally.customer";
/// The agent of a span's usage (span attribute, else resource attribute).
pub const AGENT_ATTR: &str = "tally.agent";
/// The agent when no `tally.agent` is set (resource attribute).
pub const SERVICE_NAME_ATTR: &str = "service.name";
/// The model that answered; preferred.
pub const RESPONSE_MODEL_ATTR: &str = "gen_ai.response.model";
/// The model asked for; used when the response model is absent.
pub const REQUEST_MODEL_ATTR: &str = "gen_ai.request.model";

/// Prompt tokens, cache reads and writes included (the current name first, then the
/// deprecated one).
pub const INPUT_ATTRS: &[&str] = &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"];
/// Completion tokens.
pub const OUTPUT_ATTRS: &[&str] = &[
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
];
/// Prompt tokens served from a cache.
pub const CACHE_READ_ATTRS: &[&str] = &[
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
];
/// Prompt tokens written to a cache.
pub const CACHE_WRITE_ATTRS: &[&str] = &[
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
];

/// The event type of token usage (the `llm_tokens` meter of config/tally.toml).
pub const EVENT_TYPE: &str = "llm.tokens";

/// A token kind: one event each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Input,
    Output,
    Cached,
    CacheWrite,
}

impl TokenKind {
    /// Every kind, in the order events are built.
    pub const ALL: [TokenKind; 4] = [
        TokenKind::Input,
        TokenKind::Output,
        TokenKind::Cached,
        TokenKind::CacheWrite,
    ];

    /// The `kind` of the event data, as the Python and TypeScript SDKs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Input => "input",
            TokenKind::Output => "output",
            TokenKind::Cached => "cached",
            TokenKind::CacheWrite => "cache_write",
        }
    }
}

/// Why a span that carries usage is not turned into events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanRefusal {
    #[error("no attribute `tally.customer` on the span or its resource")]
    MissingCustomer,
    #[error("no attribute `tally.agent` on the span or its resource, and no `service.name`")]
    MissingAgent,
    #[error("no attribute `gen_ai.response.model` or `gen_ai.request.model`")]
    MissingModel,
    #[error(
        "attribute `tally.customer` is {found:?} but the API key is for customer {expected:?}"
    )]
    OtherCustomer { found: String, expected: String },
    #[error("agent {found:?} (attribute `{attribute}`) is not one this API key may publish for")]
    OtherAgent {
        found: String,
        attribute: &'static str,
    },
    #[error("attribute `{attribute}`: {detail}")]
    InvalidAttribute {
        attribute: &'static str,
        detail: String,
    },
    #[error("attribute `{attribute}` is {found}, expected a whole, non-negative number of tokens")]
    InvalidTokens {
        attribute: &'static str,
        found: String,
    },
    #[error("span `{field}`: {detail}")]
    InvalidSpan { field: &'static str, detail: String },
}

impl SpanRefusal {
    /// The stable code (docs/INGEST.md): the event reason codes where one fits.
    pub fn code(&self) -> &'static str {
        match self {
            SpanRefusal::MissingCustomer => "missing_customer",
            SpanRefusal::MissingAgent => "missing_agent",
            SpanRefusal::MissingModel => "missing_model",
            SpanRefusal::OtherCustomer { .. } | SpanRefusal::OtherAgent { .. } => {
                tally_domain::Reason::SubjectMismatch.code()
            }
            SpanRefusal::InvalidTokens { .. } => tally_domain::Reason::InvalidQuantity.code(),
            SpanRefusal::InvalidAttribute { .. } | SpanRefusal::InvalidSpan { .. } => {
                tally_domain::Reason::Malformed.code()
            }
        }
    }
}

/// Where a span is: its ids in hex, as OTLP/JSON writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRef {
    pub trace_id: String,
    pub span_id: String,
}

impl std::fmt::Display for SpanRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "span {}/{}", self.trace_id, self.span_id)
    }
}

/// The usage events of one span: raw CloudEvents JSON, one per kind with tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanEvents {
    pub span: SpanRef,
    pub events: Vec<Vec<u8>>,
}

/// What a request's spans amount to.
#[derive(Debug, Default)]
pub struct Conversion {
    /// Every span of the request.
    pub spans: usize,
    /// Spans with usage and their events (a span whose counts are all 0 has none).
    pub usage: Vec<SpanEvents>,
    /// Spans with usage that were refused.
    pub refused: Vec<(SpanRef, SpanRefusal)>,
}

impl Conversion {
    /// How many events the accepted spans make.
    pub fn event_count(&self) -> usize {
        self.usage.iter().map(|s| s.events.len()).sum()
    }
}

/// Turns every span of `request` that carries GenAI usage into events for `scope`.
pub fn convert(request: &ExportTraceServiceRequest, scope: &Scope) -> Conversion {
    let mut out = Conversion::default();
    for resource_spans in &request.resource_spans {
        let resource: &[KeyValue] = resource_spans
            .resource
            .as_ref()
            .map_or(&[], |r| &r.attributes[..]);
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                out.spans += 1;
                if !carries_usage(span) {
                    continue;
                }
                let at = span_ref(span);
                match span_events(span, resource, scope, &at) {
                    Ok(events) => out.usage.push(SpanEvents { span: at, events }),
                    Err(refusal) => out.refused.push((at, refusal)),
                }
            }
        }
    }
    out
}

/// Whether any token attribute is present (whatever its value).
pub fn carries_usage(span: &Span) -> bool {
    [
        INPUT_ATTRS,
        OUTPUT_ATTRS,
        CACHE_READ_ATTRS,
        CACHE_WRITE_ATTRS,
    ]
    .iter()
    .flat_map(|names| names.iter())
    .any(|name| attribute(&span.attributes, name).is_some())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn span_ref(span: &Span) -> SpanRef {
    SpanRef {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], name: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == name)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attribute<'a>(
    attributes: &'a [KeyValue],
    name: &'static str,
) -> Result<Option<&'a str>, SpanRefusal> {
    match attribute(attributes, name) {
        None => Ok(None),
        Some(Value::StringValue(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(SpanRefusal::InvalidAttribute {
            attribute: name,
            detail: format!("is {}, expected a string", describe(other)),
        }),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::StringValue(s) => format!("{:?}", s.chars().take(64).collect::<String>()),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::ArrayValue(_) => "an array".into(),
        Value::KvlistValue(_) => "a key-value list".into(),
        Value::BytesValue(_) => "bytes".into(),
        #[allow(unreachable_patterns)] // newer protocol versions may add kinds
        _ => "an unsupported value".into(),
    }
}

/// The first present attribute of `names` as a token count; 0 when none is present.
fn tokens(attributes: &[KeyValue], names: &[&'static str]) -> Result<u64, SpanRefusal> {
    let Some((name, value)) = names
        .iter()
        .find_map(|n| attribute(attributes, n).map(|v| (*n, v)))
    else {
        return Ok(0);
    };
    let invalid = || SpanRefusal::InvalidTokens {
        attribute: name,
        found: describe(value),
    };
    match value {
        Value::IntValue(i) => u64::try_from(*i).map_err(|_| invalid()),
        // some instrumentations record counts as doubles; whole ones are exact below 2^53
        Value::DoubleValue(d) if d.fract() == 0.0 && (0.0..9.0e15).contains(d) => Ok(*d as u64),
        Value::StringValue(s) => s.parse::<u64>().map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}

/// Token counts by kind, each counted once (see the module's rules).
pub fn token_counts(attributes: &[KeyValue]) -> Result<[(TokenKind, u64); 4], SpanRefusal> {
    let input_total = tokens(attributes, INPUT_ATTRS)?;
    let output = tokens(attributes, OUTPUT_ATTRS)?;
    let cached = tokens(attributes, CACHE_READ_ATTRS)?;
    let cache_write = tokens(attributes, CACHE_WRITE_ATTRS)?;
    let input = match cached
        .checked_add(cache_write)
        .and_then(|c| input_total.checked_sub(c))
    {
        Some(rest) => rest,
        None => input_total,
    };
    Ok([
        (TokenKind::Input, input),
        (TokenKind::Output, output),
        (TokenKind::Cached, cached),
        (TokenKind::CacheWrite, cache_write),
    ])
}

fn customer_of(
    span: &[KeyValue],
    resource: &[KeyValue],
    scope: &Scope,
) -> Result<CustomerId, SpanRefusal> {
    let raw = match string_attribute(span, CUSTOMER_ATTR)? {
        Some(c) => c,
        None => string_attribute(resource, CUSTOMER_ATTR)?.ok_or(SpanRefusal::MissingCustomer)?,
    };
    let customer = CustomerId::new(raw).map_err(|e| SpanRefusal::InvalidAttribute {
        attribute: CUSTOMER_ATTR,
        detail: e.to_string(),
    })?;
    if customer != scope.customer {
        return Err(SpanRefusal::OtherCustomer {
            found: customer.to_string(),
            expected: scope.customer.to_string(),
        });
    }
    Ok(customer)
}

fn agent_of(
    span: &[KeyValue],
    resource: &[KeyValue],
    scope: &Scope,
) -> Result<AgentId, SpanRefusal> {
    let (attribute, raw) = if let Some(a) = string_attribute(span, AGENT_ATTR)? {
        (AGENT_ATTR, a)
    } else if let Some(a) = string_attribute(resource, AGENT_ATTR)? {
        (AGENT_ATTR, a)
    } else if let Some(a) = string_attribute(resource, SERVICE_NAME_ATTR)? {
        (SERVICE_NAME_ATTR, a)
    } else {
        return Err(SpanRefusal::MissingAgent);
    };
    let agent = AgentId::new(raw).map_err(|e| SpanRefusal::InvalidAttribute {
        attribute,
        detail: e.to_string(),
    })?;
    if !scope.agents.is_empty() && !scope.agents.contains(&agent) {
        return Err(SpanRefusal::OtherAgent {
            found: agent.to_string(),
            attribute,
        });
    }
    Ok(agent)
}

fn model_of(span: &[KeyValue]) -> Result<&str, SpanRefusal> {
    let model = match string_attribute(span, RESPONSE_MODEL_ATTR)? {
        Some(m) if !m.is_empty() => m,
        _ => string_attribute(span, REQUEST_MODEL_ATTR)?.unwrap_or(""),
    };
    if model.is_empty() {
        return Err(SpanRefusal::MissingModel);
    }
    Ok(model)
}

/// The span's end as an RFC 3339 timestamp (nanoseconds, UTC).
fn end_time(span: &Span) -> Result<String, SpanRefusal> {
    let nanos = i64::try_from(span.end_time_unix_nano)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| SpanRefusal::InvalidSpan {
            field: "end_time_unix_nano",
            detail: format!("{} is not a time", span.end_time_unix_nano),
        })?;
    Ok(DateTime::from_timestamp_nanos(nanos).to_rfc3339_opts(SecondsFormat::Nanos, true))
}

fn check_ids(span: &Span) -> Result<(), SpanRefusal> {
    let valid = |id: &[u8], len: usize| id.len() == len && id.iter().any(|b| *b != 0);
    if !valid(&span.trace_id, 16) {
        return Err(SpanRefusal::InvalidSpan {
            field: "trace_id",
            detail: "must be 16 bytes, not all zero".into(),
        });
    }
    if !valid(&span.span_id, 8) {
        return Err(SpanRefusal::InvalidSpan {
            field: "span_id",
            detail: "must be 8 bytes, not all zero".into(),
        });
    }
    Ok(())
}

/// The event id of one kind of a span's usage: the same for the same span, whoever sends it.
pub fn event_id(at: &SpanRef, kind: TokenKind) -> String {
    format!("otlp-{}-{}-{}", at.trace_id, at.span_id, kind.as_str())
}

fn span_events(
    span: &Span,
    resource: &[KeyValue],
    scope: &Scope,
    at: &SpanRef,
) -> Result<Vec<Vec<u8>>, SpanRefusal> {
    check_ids(span)?;
    let counts = token_counts(&span.attributes)?;
    let customer = customer_of(&span.attributes, resource, scope)?;
    let agent = agent_of(&span.attributes, resource, scope)?;
    let model = model_of(&span.attributes)?;
    let time = end_time(span)?;
    let events = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| {
            let event = serde_json::json!({
                "specversion": "1.0",
                "id": event_id(at, *kind),
                "source": agent.as_str(),
                "subject": customer.as_str(),
                "type": EVENT_TYPE,
                "time": time,
                "datacontenttype": "application/json",
                "data": {"tokens": n, "model": model, "kind": kind.as_str()},
            });
            serde_json::to_vec(&event).expect("a JSON value serializes")
        })
        .collect();
    Ok(events)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn s(v: &str) -> Value {
        Value::StringValue(v.into())
    }

    fn span(id: u8, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![0xab; 16],
            span_id: vec![id; 8],
            name: "chat gpt-4o".into(),
            start_time_unix_nano: 1_795_726_799_000_000_000,
            end_time_unix_nano: 1_795_726_800_123_456_789,
            attributes,
            ..Default::default()
        }
    }

    fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn scope(customer: &str, agents: &[&str]) -> Scope {
        Scope {
            customer: CustomerId::new(customer).unwrap(),
            agents: agents.iter().map(|a| AgentId::new(*a).unwrap()).collect(),
        }
    }

    fn usage(input: i64, output: i64) -> Vec<KeyValue> {
        vec![
            kv("gen_ai.request.model", s("gpt-4o")),
            kv("gen_ai.usage.input_tokens", Value::IntValue(input)),
            kv("gen_ai.usage.output_tokens", Value::IntValue(output)),
        ]
    }

    fn acme() -> Vec<KeyValue> {
        vec![
            kv("tally.customer", s("acme")),
            kv("service.name", s("support-bot")),
        ]
    }

    fn events_json(c: &Conversion) -> Vec<serde_json::Value> {
        c.usage
            .iter()
            .flat_map(|s| s.events.iter())
            .map(|e| serde_json::from_slice(e).unwrap())
            .collect()
    }

    #[test]
    fn a_genai_span_becomes_one_event_per_kind_with_tokens() {
        let c = convert(
            &request(acme(), vec![span(1, usage(120, 30))]),
            &scope("acme", &[]),
        );
        assert_eq!((c.spans, c.refused.len()), (1, 0));
        let events = events_json(&c);
        assert_eq!(events.len(), 2);
        let span_id = "01".repeat(8);
        let trace_id = "ab".repeat(16);
        assert_eq!(
            events[0],
            serde_json::json!({
                "specversion": "1.0",
                "id": format!("otlp-{trace_id}-{span_id}-input"),
                "source": "support-bot", "subject": "acme", "type": "llm.tokens",
                "time": "2026-11-26T21:00:00.123456789Z",
                "datacontenttype": "application/json",
                "data": {"tokens": 120, "model": "gpt-4o", "kind": "input"}
            })
        );
        assert_eq!(events[1]["data"]["kind"], "output");
        assert_eq!(events[1]["data"]["tokens"], 30);
        // every event parses as the contract's usage event
        for e in &c.usage[0].events {
            tally_domain::UsageEvent::parse(e, 65536).unwrap();
        }
    }

    #[test]
    fn the_same_span_makes_the_same_bytes_every_time() {
        let req = request(acme(), vec![span(7, usage(5, 6))]);
        let a = convert(&req, &scope("acme", &[]));
        let b = convert(&req, &scope("acme", &[]));
        assert_eq!(a.usage, b.usage);
    }

    #[test]
    fn spans_without_usage_are_ignored_and_zero_counts_make_no_event() {
        let plain = span(1, vec![kv("http.method", s("GET"))]);
        let zero = span(2, usage(0, 0));
        let c = convert(&request(acme(), vec![plain, zero]), &scope("acme", &[]));
        assert_eq!(c.spans, 2);
        assert!(c.refused.is_empty());
        assert_eq!(c.usage.len(), 1, "the zero span carries usage");
        assert!(c.usage[0].events.is_empty());
    }

    #[test]
    fn cache_tokens_are_taken_out_of_the_input_once() {
        let mut attrs = usage(1000, 10);
        attrs.push(kv(
            "gen_ai.usage.cache_read.input_tokens",
            Value::IntValue(600),
        ));
        attrs.push(kv(
            "gen_ai.usage.cache_creation.input_tokens",
            Value::IntValue(100),
        ));
        let counts = token_counts(&attrs).unwrap();
        assert_eq!(
            counts.map(|(k, n)| (k.as_str(), n)),
            [
                ("input", 300),
                ("output", 10),
                ("cached", 600),
                ("cache_write", 100)
            ]
        );
        // an instrumentation that counted cache reads apart from the input
        let apart = vec![
            kv("gen_ai.usage.input_tokens", Value::IntValue(50)),
            kv("gen_ai.usage.cache_read_input_tokens", Value::IntValue(900)),
        ];
        assert_eq!(token_counts(&apart).unwrap()[0], (TokenKind::Input, 50));
        // deprecated names, doubles and numeric strings
        let old = vec![
            kv("gen_ai.usage.prompt_tokens", Value::DoubleValue(40.0)),
            kv("gen_ai.usage.completion_tokens", s("2")),
        ];
        assert_eq!(
            token_counts(&old).unwrap()[..2],
            [(TokenKind::Input, 40), (TokenKind::Output, 2)]
        );
    }

    #[test]
    fn the_response_model_wins_and_span_attributes_override_the_resource() {
        let mut attrs = usage(1, 0);
        attrs.push(kv("gen_ai.response.model", s("gpt-4o-2024-08-06")));
        attrs.push(kv("tally.agent", s("router")));
        let c = convert(&request(acme(), vec![span(1, attrs)]), &scope("acme", &[]));
        let e = &events_json(&c)[0];
        assert_eq!(e["data"]["model"], "gpt-4o-2024-08-06");
        assert_eq!(e["source"], "router");
    }

    #[test]
    fn refusals_name_their_reason() {
        let cases: Vec<(Vec<KeyValue>, Vec<KeyValue>, &str)> = vec![
            (
                vec![kv("service.name", s("bot"))],
                usage(1, 1),
                "missing_customer",
            ),
            (
                vec![kv("tally.customer", s("acme"))],
                usage(1, 1),
                "missing_agent",
            ),
            (
                acme(),
                vec![kv("gen_ai.usage.input_tokens", Value::IntValue(1))],
                "missing_model",
            ),
            (
                vec![
                    kv("tally.customer", s("globex")),
                    kv("service.name", s("bot")),
                ],
                usage(1, 1),
                "subject_mismatch",
            ),
            (acme(), usage(-1, 1), "invalid_quantity"),
            (
                vec![
                    kv("tally.customer", s("acme")),
                    kv("service.name", s("unknown_service:python")),
                ],
                usage(1, 1),
                "malformed",
            ),
            (
                vec![
                    kv("tally.customer", Value::IntValue(7)),
                    kv("service.name", s("bot")),
                ],
                usage(1, 1),
                "malformed",
            ),
        ];
        for (resource, attrs, code) in cases {
            let c = convert(
                &request(resource.clone(), vec![span(1, attrs)]),
                &scope("acme", &[]),
            );
            assert_eq!(c.refused.len(), 1, "{resource:?}");
            assert_eq!(c.refused[0].1.code(), code, "{}", c.refused[0].1);
        }
        let agents = convert(
            &request(acme(), vec![span(1, usage(1, 1))]),
            &scope("acme", &["other-bot"]),
        );
        assert_eq!(agents.refused[0].1.code(), "subject_mismatch");
        let mut bad_ids = span(1, usage(1, 1));
        bad_ids.trace_id = vec![0; 16];
        let ids = convert(&request(acme(), vec![bad_ids]), &scope("acme", &[]));
        assert_eq!(
            ids.refused[0].1,
            SpanRefusal::InvalidSpan {
                field: "trace_id",
                detail: "must be 16 bytes, not all zero".into()
            }
        );
        let mut no_end = span(1, usage(1, 1));
        no_end.end_time_unix_nano = 0;
        let end = convert(&request(acme(), vec![no_end]), &scope("acme", &[]));
        assert_eq!(end.refused[0].1.code(), "malformed");
    }
}
