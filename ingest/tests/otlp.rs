//! `POST /v1/traces` over real NATS JetStream and ClickHouse: OpenTelemetry GenAI spans sent
//! as OTLP/HTTP (JSON and protobuf, gzip), what is stored, and how the gateway answers.
#![cfg(feature = "otlp")]

mod support;

use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use support::Harness;
use tally_ingest::gateway::otlp::wire::Status;

const TRACE: &str = "5b8efff798038103d269b633813fc60c";

/// An OTLP/JSON export, written as an exporter writes it: one resource of acme's
/// `support-bot` with a chat span (usage), an HTTP span (no usage) and a chat span that names
/// globex; a second resource without `tally.customer`.
fn json_export() -> String {
    format!(
        r#"{{"resourceSpans":[
  {{"resource":{{"attributes":[
      {{"key":"service.name","value":{{"stringValue":"support-bot"}}}},
      {{"key":"tally.customer","value":{{"stringValue":"acme"}}}}]}},
    "scopeSpans":[{{"scope":{{"name":"openai.instrumentation"}},"spans":[
      {{"traceId":"{TRACE}","spanId":"eee19b7ec3c1b174","name":"chat gpt-4o","kind":3,
        "startTimeUnixNano":"1795726799000000000","endTimeUnixNano":"1795726800123000000",
        "attributes":[
          {{"key":"gen_ai.operation.name","value":{{"stringValue":"chat"}}}},
          {{"key":"gen_ai.request.model","value":{{"stringValue":"gpt-4o"}}}},
          {{"key":"gen_ai.response.model","value":{{"stringValue":"gpt-4o-2024-08-06"}}}},
          {{"key":"gen_ai.usage.input_tokens","value":{{"intValue":"1200"}}}},
          {{"key":"gen_ai.usage.output_tokens","value":{{"intValue":340}}}},
          {{"key":"gen_ai.usage.cache_read.input_tokens","value":{{"intValue":"1000"}}}}],
        "status":{{}}}},
      {{"traceId":"{TRACE}","spanId":"051581bf3cb55c13","parentSpanId":"eee19b7ec3c1b174",
        "name":"GET /search","kind":3,"startTimeUnixNano":"1795726799100000000",
        "endTimeUnixNano":"1795726799200000000",
        "attributes":[{{"key":"http.request.method","value":{{"stringValue":"GET"}}}}]}},
      {{"traceId":"{TRACE}","spanId":"1f2e3d4c5b6a7988","name":"chat gpt-4o","kind":3,
        "startTimeUnixNano":"1795726799000000000","endTimeUnixNano":"1795726801000000000",
        "attributes":[
          {{"key":"tally.customer","value":{{"stringValue":"globex"}}}},
          {{"key":"gen_ai.request.model","value":{{"stringValue":"gpt-4o"}}}},
          {{"key":"gen_ai.usage.input_tokens","value":{{"intValue":"5"}}}}]}}]}}]}},
  {{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"nightly-job"}}}}]}},
    "scopeSpans":[{{"spans":[
      {{"traceId":"{TRACE}","spanId":"aaaaaaaaaaaaaaa1","name":"chat","kind":1,
        "startTimeUnixNano":"1795726799000000000","endTimeUnixNano":"1795726801000000000",
        "attributes":[
          {{"key":"gen_ai.request.model","value":{{"stringValue":"gpt-4o"}}}},
          {{"key":"gen_ai.usage.output_tokens","value":{{"intValue":"9"}}}}]}}]}}]}}
]}}"#
    )
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// A protobuf export of one Anthropic-style span for `customer` (agent from `tally.agent`).
fn proto_export(customer: &str, span_id: u8) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", text("ignored-when-tally-agent-is-set")),
                    kv("tally.customer", text(customer)),
                    kv("tally.agent", text("planner")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: (1..=16).collect(),
                    span_id: vec![span_id; 8],
                    name: "chat claude".into(),
                    start_time_unix_nano: 1_795_726_799_000_000_000,
                    end_time_unix_nano: 1_795_726_800_000_000_000,
                    attributes: vec![
                        kv("gen_ai.request.model", text("claude-sonnet-4")),
                        kv("gen_ai.usage.input_tokens", Value::IntValue(70)),
                        kv("gen_ai.usage.output_tokens", Value::IntValue(20)),
                        kv(
                            "gen_ai.usage.cache_creation.input_tokens",
                            Value::IntValue(50),
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// One raw HTTP answer (the support client parses JSON only).
struct Raw {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

async fn post(h: &Harness, headers: &[(&str, &str)], body: Vec<u8>) -> Raw {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(h.running.addr)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri("/v1/traces")
        .header("host", "gateway");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(bytes::Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Raw {
        status,
        content_type,
        body,
    }
}

/// Every stored message: (subject, Nats-Msg-Id, event).
async fn stored(h: &Harness) -> Vec<(String, String, serde_json::Value)> {
    let stream = h.js.get_stream(&h.env.nats.stream).await.unwrap();
    let mut out = Vec::new();
    for seq in 1..=h.stored().await {
        let m = stream.get_raw_message(seq).await.unwrap();
        out.push((
            m.subject.to_string(),
            m.headers.get("Nats-Msg-Id").unwrap().as_str().to_owned(),
            serde_json::from_slice(&m.payload).unwrap(),
        ));
    }
    out
}

#[tokio::test]
async fn genai_spans_become_token_events_and_a_retried_export_is_stored_once() {
    let h = Harness::start("otlp_json", |_| {}).await;
    let key = h.key("acme", &[]).await;
    let auth = format!("Bearer {key}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let a = post(&h, &headers, json_export().into_bytes()).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.content_type, "application/json");
    let answer: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    // the globex span and the span without a customer are rejected; the HTTP span is ignored
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "2", "{answer}");
    let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        message.starts_with("2 spans rejected: missing_customer (1, first span ")
            && message.contains("subject_mismatch (1, first span ")
            && message.contains(
                r#"attribute `tally.customer` is "globex" but the API key is for customer "acme""#
            ),
        "{message}"
    );

    let p = &h.env.nats.subject_prefix;
    let events = stored(&h).await;
    let ids: Vec<(&str, &str)> = events
        .iter()
        .map(|(s, id, _)| (s.as_str(), id.as_str()))
        .collect();
    let subject = format!("{p}.acme.support-bot");
    let msg_id = |kind: &str| format!("acme:support-bot:otlp-{TRACE}-eee19b7ec3c1b174-{kind}");
    assert_eq!(
        ids,
        [
            (subject.as_str(), msg_id("input").as_str()),
            (subject.as_str(), msg_id("output").as_str()),
            (subject.as_str(), msg_id("cached").as_str()),
        ]
    );
    let data: Vec<(&str, u64, &str)> = events
        .iter()
        .map(|(_, _, e)| {
            assert_eq!(
                (&e["type"], &e["subject"], &e["source"]),
                (&"llm.tokens".into(), &"acme".into(), &"support-bot".into())
            );
            assert_eq!(e["time"], "2026-11-26T21:00:00.123000000Z");
            (
                e["data"]["kind"].as_str().unwrap(),
                e["data"]["tokens"].as_u64().unwrap(),
                e["data"]["model"].as_str().unwrap(),
            )
        })
        .collect();
    let model = "gpt-4o-2024-08-06";
    assert_eq!(
        data,
        [
            ("input", 200, model),
            ("output", 340, model),
            ("cached", 1000, model)
        ]
    );

    // The exporter retries the same export (gzip this time): the same ids, nothing new.
    let again = post(
        &h,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gzip(json_export().as_bytes()),
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(h.stored().await, 3, "a retried export is stored once");
    h.stop().await;
}

#[tokio::test]
async fn protobuf_exports_are_answered_in_protobuf_and_other_customers_spans_are_refused() {
    let h = Harness::start("otlp_proto", |_| {}).await;
    let key = h.key("acme", &["planner"]).await;
    let auth = format!("Bearer {key}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "gzip"),
    ];
    let a = post(&h, &headers, gzip(&proto_export("acme", 7))).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "application/x-protobuf");
    let answer = ExportTraceServiceResponse::decode(&a.body[..]).unwrap();
    assert_eq!(answer.partial_success, None, "fully accepted");
    let events = stored(&h).await;
    let kinds: Vec<(&str, u64)> = events
        .iter()
        .map(|(_, _, e)| {
            assert_eq!(
                (&e["source"], &e["data"]["model"]),
                (&"planner".into(), &"claude-sonnet-4".into())
            );
            (
                e["data"]["kind"].as_str().unwrap(),
                e["data"]["tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("input", 20), ("output", 20), ("cache_write", 50)]);
    assert!(events[0]
        .1
        .starts_with("acme:planner:otlp-0102030405060708090a0b0c0d0e0f10-0707070707070707-"));

    // The same export again is stored once; a span of another customer is refused.
    let a = post(&h, &headers, gzip(&proto_export("acme", 7))).await;
    assert_eq!(a.status, 200);
    let a = post(&h, &headers, gzip(&proto_export("globex", 8))).await;
    assert_eq!(a.status, 200);
    let partial = ExportTraceServiceResponse::decode(&a.body[..])
        .unwrap()
        .partial_success
        .expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("subject_mismatch"),
        "{}",
        partial.error_message
    );
    assert_eq!(h.stored().await, 3);
    h.stop().await;
}

#[tokio::test]
async fn refused_exports_are_answered_with_an_otlp_status() {
    let h = Harness::start("otlp_refused", |c| {
        c.body_max_bytes = 4096;
        c.event_max_bytes = 4096;
    })
    .await;
    let key = h.key("acme", &[]).await;
    let auth = format!("Bearer {key}");
    let status_of = |r: &Raw| Status::decode(&r.body[..]).unwrap();

    let no_key = post(
        &h,
        &[("content-type", "application/x-protobuf")],
        proto_export("acme", 1),
    )
    .await;
    assert_eq!(no_key.status, 401);
    assert_eq!(status_of(&no_key).code, 16);
    assert!(status_of(&no_key).message.starts_with("missing_key: "));

    let text = post(
        &h,
        &[("authorization", &auth), ("content-type", "text/plain")],
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(text.status, 415);
    let json: serde_json::Value = serde_json::from_slice(&text.body).unwrap();
    assert!(json["message"]
        .as_str()
        .unwrap()
        .starts_with("unsupported_media_type: "));

    let garbage = post(
        &h,
        &[
            ("authorization", &auth),
            ("content-type", "application/x-protobuf"),
        ],
        vec![0xff; 64],
    )
    .await;
    assert_eq!(garbage.status, 400);
    assert_eq!(status_of(&garbage).code, 3);
    assert!(status_of(&garbage).message.starts_with("malformed_otlp: "));

    let bad_json = post(
        &h,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not hex"}]}]}]}"#.to_vec(),
    )
    .await;
    assert_eq!(bad_json.status, 400);

    let big = post(
        &h,
        &[
            ("authorization", &auth),
            ("content-type", "application/x-protobuf"),
        ],
        vec![0; 8192],
    )
    .await;
    assert_eq!(big.status, 413);
    assert!(status_of(&big).message.starts_with("body_too_large: "));

    let mut http = h.http().await;
    let get = http
        .send("GET", "/v1/traces", &[("authorization", &auth)], "")
        .await;
    assert_eq!(get.status, 405);
    assert_eq!(h.stored().await, 0);
    h.stop().await;
}
