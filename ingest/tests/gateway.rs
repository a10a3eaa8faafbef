//! The HTTP gateway over real NATS JetStream and ClickHouse: what agents send, what they get
//! back, and what lands in the stream.

mod support;

use support::{event, event_with, outcomes, token, Harness};
use tally_ingest::gateway;
use tally_platform::auth::{audit, Role};

fn o(
    status: &str,
    code: Option<&str>,
    field: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    (
        status.to_owned(),
        code.map(str::to_owned),
        field.map(str::to_owned),
    )
}

#[tokio::test]
async fn a_single_event_is_stored_under_its_customer_and_agent_with_its_identity_as_msg_id() {
    let h = Harness::start("gw_single", |_| {}).await;
    let key = h.key("acme", &[]).await;
    let mut http = h.http().await;
    let a = http
        .events(
            &key,
            "application/cloudevents+json",
            event("e-1", "acme", "bot-1"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(outcomes(&a), vec![o("accepted", None, None)]);
    assert_eq!(a.json["results"][0]["id"], "e-1");
    let stream = h.js.get_stream(&h.env.nats.stream).await.unwrap();
    let msg = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        msg.subject.as_str(),
        format!("{}.acme.bot-1", h.env.nats.subject_prefix)
    );
    assert_eq!(
        msg.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("acme:bot-1:e-1")
    );
    assert_eq!(&msg.payload[..], event("e-1", "acme", "bot-1").as_bytes());
    h.stop().await;
}

/// Issue 16, finding 1: one customer's event id used to suppress another customer's event
/// (and another agent's) inside JetStream's duplicate window, answered `duplicate`.
#[tokio::test]
async fn the_same_id_from_another_customer_or_agent_is_its_own_event() {
    let h = Harness::start("gw_ident", |_| {}).await;
    let mut http = h.http().await;
    for (customer, agent) in [
        ("customer-1", "agent-1"),
        ("customer-2", "agent-1"),
        ("customer-1", "agent-2"),
    ] {
        let key = h.key(customer, &[]).await;
        let a = http
            .events(
                &key,
                "application/cloudevents+json",
                event("order-42", customer, agent),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(
            outcomes(&a),
            vec![o("accepted", None, None)],
            "{customer}/{agent}"
        );
    }
    let stream = h.js.get_stream(&h.env.nats.stream).await.unwrap();
    let mut ids = Vec::new();
    for seq in 1..=3 {
        let msg = stream.get_raw_message(seq).await.unwrap();
        ids.push(msg.headers.get("Nats-Msg-Id").unwrap().as_str().to_owned());
    }
    assert_eq!(
        ids,
        [
            "customer-1:agent-1:order-42",
            "customer-2:agent-1:order-42",
            "customer-1:agent-2:order-42"
        ]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_batch_is_answered_per_event_and_a_resent_batch_is_all_duplicates_on_one_connection() {
    let h = Harness::start("gw_batch", |_| {}).await;
    let key = h.key("acme", &[]).await;
    let mut http = h.http().await;
    let batch: Vec<String> = (0..3)
        .map(|i| event(&format!("b-{i}"), "acme", "bot"))
        .collect();
    let first = http.batch(&key, &batch).await;
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["accepted"], 3);
    let again = http.batch(&key, &batch).await;
    assert_eq!(again.status, 200);
    assert_eq!(outcomes(&again), vec![o("duplicate", None, None); 3]);
    assert_eq!(again.json["duplicates"], 3);
    assert_eq!(h.stored().await, 3);
    h.stop().await;
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    use std::io::Write;
    let h = Harness::start("gw_gzip", |_| {}).await;
    let key = h.key("acme", &[]).await;
    let body = format!(
        "[{},{}]",
        event("z-1", "acme", "bot"),
        event("z-2", "acme", "bot")
    );
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let auth = format!("Bearer {key}");
    let a = h
        .http()
        .await
        .send(
            "POST",
            "/v1/events",
            &[
                ("authorization", &auth),
                ("content-type", "application/cloudevents-batch+json"),
                ("content-encoding", "gzip"),
            ],
            gz,
        )
        .await;
    assert_eq!(
        (a.status, a.json["accepted"].as_u64()),
        (200, Some(2)),
        "{}",
        a.json
    );
    h.stop().await;
}

#[tokio::test]
async fn every_rejection_names_its_reason_and_field_and_good_events_still_pass() {
    let h = Harness::start("gw_reject", |c| {
        c.event_max_bytes = 2048;
        c.depth_max = 4;
        c.string_max_bytes = 100;
    })
    .await;
    let key = h.key("acme", &["bot", "bot-2"]).await;
    let batch = vec![
        event("ok-1", "acme", "bot"),
        event("r-1", "acme", "bot").replace("2026-11-26T21:00:00.123Z", "yesterday"),
        event("r-2", "acme", "bot").replace("\"1.0\"", "\"0.3\""),
        event("r-3", "acme", "bot").replace("\"id\":\"r-3\",", ""),
        event("r-4", "acme", "bot").replace("llm.tokens", ""),
        event_with("r-5", "acme", "bot", "[1]"),
        "42".to_owned(),
        event_with(
            "r-6",
            "acme",
            "bot",
            &format!("{{\"pad\":\"{}\"}}", "x".repeat(90)),
        ),
        event_with("r-7", "acme", "bot", r#"{"a":{"b":{"c":{"d":1}}}}"#),
        event_with(
            "r-8",
            "acme",
            "bot",
            &format!("{{\"s\":\"{}\"}}", "y".repeat(101)),
        ),
        event_with(
            "r-9",
            "acme",
            "bot",
            &format!("{{\"s\":[{}]}}", vec!["\"aaaaaaaaaa\""; 200].join(",")),
        ),
        event("r-10", "globex", "bot"),
        event("r-11", "acme", "bot-3"),
        event("r-12", "acme", "bad.agent"),
        event("ok-2", "acme", "bot-2"),
    ];
    let a = http_batch(&h, &key, &batch).await;
    assert_eq!(a.status, 400, "{}", a.json);
    let got = outcomes(&a);
    let malformed = |f: Option<&str>| o("rejected", Some("malformed"), f);
    assert_eq!(got[0], o("accepted", None, None));
    assert_eq!(got[1], malformed(Some("time")));
    assert_eq!(got[2], malformed(Some("specversion")));
    assert_eq!(got[3], malformed(Some("id")));
    assert_eq!(got[4], malformed(Some("type")));
    assert_eq!(got[5], malformed(Some("data")));
    assert_eq!(got[6], malformed(None));
    assert_eq!(
        got[7],
        o("accepted", None, None),
        "a string just under the limit passes"
    );
    assert_eq!(
        got[8],
        malformed(Some("data")),
        "nesting deeper than depth_max"
    );
    assert_eq!(
        got[9],
        malformed(Some("data")),
        "a string longer than string_max_bytes"
    );
    assert_eq!(got[10], o("rejected", Some("too_large"), None));
    assert_eq!(
        got[11],
        o("rejected", Some("subject_mismatch"), Some("subject"))
    );
    assert_eq!(
        got[12],
        o("rejected", Some("subject_mismatch"), Some("source"))
    );
    assert_eq!(got[13], malformed(Some("source")));
    assert_eq!(got[14], o("accepted", None, None));
    assert_eq!(
        (a.json["accepted"].as_u64(), a.json["rejected"].as_u64()),
        (Some(3), Some(12))
    );
    assert_eq!(h.stored().await, 3);
    h.stop().await;
}

async fn http_batch(h: &Harness, key: &str, batch: &[String]) -> support::Answer {
    h.http().await.batch(key, batch).await
}

#[tokio::test]
async fn missing_wrong_and_revoked_keys_are_refused_before_anything_is_published() {
    let h = Harness::start("gw_auth", |_| {}).await;
    let mut http = h.http().await;
    let body = event("a-1", "acme", "bot");
    let a = http
        .send(
            "POST",
            "/v1/events",
            &[("content-type", "application/cloudevents+json")],
            body.clone(),
        )
        .await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (401, Some("missing_key"))
    );
    let fake = format!("tk_{}_{}", "0".repeat(16), "1".repeat(64));
    let a = http
        .events(&fake, "application/cloudevents+json", body.clone())
        .await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (401, Some("invalid_key"))
    );

    // Created and revoked through the admin API, on its own listener.
    let admin = h.admin.clone();
    let mut admin_http = h.admin_http().await;
    let created = admin_http
        .send(
            "POST",
            "/v1/admin/keys",
            &[("authorization", &admin)],
            r#"{"customer":"acme","label":"ci"}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.json);
    let key = created.json["key"].as_str().unwrap().to_owned();
    let key_id = created.json["key_id"].as_str().unwrap().to_owned();
    let mut wrong_secret = key.clone();
    wrong_secret.replace_range(key.len() - 4.., "abcd");
    let a = http
        .events(&wrong_secret, "application/cloudevents+json", body.clone())
        .await;
    assert_eq!(a.json["error"]["code"], "invalid_key");
    let a = http
        .events(&key, "application/cloudevents+json", body.clone())
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let revoked = admin_http
        .send(
            "POST",
            &format!("/v1/admin/keys/{key_id}/revoke"),
            &[("authorization", &admin)],
            "",
        )
        .await;
    assert_eq!(
        (revoked.status, revoked.json["revoked"].as_bool()),
        (200, Some(true))
    );
    let a = http
        .events(
            &key,
            "application/cloudevents+json",
            event("a-2", "acme", "bot"),
        )
        .await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (401, Some("revoked_key"))
    );

    // A key for acme cannot publish for globex.
    let acme = h.key("acme", &[]).await;
    let a = http
        .events(
            &acme,
            "application/cloudevents+json",
            event("a-3", "globex", "bot"),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        outcomes(&a),
        vec![o("rejected", Some("subject_mismatch"), Some("subject"))]
    );
    assert_eq!(h.stored().await, 1);
    h.stop().await;
}

/// Issue 16, finding 5: the admin API was served on the public listener behind one static
/// token. Now it listens on its own address and takes API tokens of role `key_admin`; its
/// changes are audited under the token's actor; revocation survives a reload.
#[tokio::test]
async fn the_admin_api_is_on_its_own_listener_for_key_admins_and_revocation_survives_a_reload() {
    let h = Harness::start("gw_admin", |_| {}).await;
    let reader = token(&h.env.db(), "rita", Role::Reader).await;
    let mut public = h.http().await;
    let a = public
        .send("GET", "/v1/admin/keys", &[("authorization", &h.admin)], "")
        .await;
    assert_eq!(a.status, 404, "not served where agents connect");
    let mut http = h.admin_http().await;
    let reader = format!("Bearer {reader}");
    for (auth, status, code) in [
        (None, 401, "missing_token"),
        (Some("Bearer nope"), 401, "invalid_token"),
        (
            Some("Bearer admin-token-for-tests-0123456789"),
            401,
            "invalid_token",
        ),
        (Some(reader.as_str()), 403, "forbidden"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let a = http
            .send("POST", "/v1/admin/keys", &headers, r#"{"customer":"acme"}"#)
            .await;
        assert_eq!(
            (a.status, a.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{auth:?}"
        );
    }
    assert!(
        tally_ingest::gateway::key_store::load(&h.env.db())
            .await
            .unwrap()
            .is_empty(),
        "no refused request created a key"
    );
    let admin = h.admin.clone();
    let a = http
        .send(
            "POST",
            "/v1/admin/keys",
            &[("authorization", &admin)],
            r#"{"customer":"no such"}"#,
        )
        .await;
    assert_eq!(
        (a.status, a.json["error"]["field"].as_str()),
        (400, Some("customer"))
    );
    let a = http
        .send(
            "POST",
            "/v1/admin/keys",
            &[("authorization", &admin)],
            r#"{"customer":"acme","agents":["bot-1"]}"#,
        )
        .await;
    let key_id = a.json["key_id"].as_str().unwrap().to_owned();
    http.send(
        "POST",
        &format!("/v1/admin/keys/{key_id}/revoke"),
        &[("authorization", &admin)],
        "",
    )
    .await;
    let listed = http
        .send("GET", "/v1/admin/keys", &[("authorization", &admin)], "")
        .await;
    let keys = listed.json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        (keys[0]["revoked"].as_bool(), keys[0]["agents"][0].as_str()),
        (Some(true), Some("bot-1"))
    );
    assert!(keys[0].get("key").is_none() && !listed.json.to_string().contains("sha256"));
    let rows = audit::of_service(&h.env.db(), "gateway").await.unwrap();
    let mut changes: Vec<(&str, &str, u16)> = rows
        .iter()
        .filter(|r| r.status != 0)
        .map(|r| (r.actor.as_str(), r.path.as_str(), r.status))
        .collect();
    changes.sort();
    let revoke = format!("/v1/admin/keys/{key_id}/revoke");
    let mut want = vec![
        ("api:key-admin", "/v1/admin/keys", 400),
        ("api:key-admin", "/v1/admin/keys", 201),
        ("api:key-admin", revoke.as_str(), 200),
    ];
    want.sort();
    assert_eq!(changes, want);
    // A fresh instance loading from ClickHouse sees the key revoked.
    h.gw.keys.replace(vec![]);
    tally_ingest::gateway::server::load_keys(&h.gw)
        .await
        .unwrap();
    let a = http
        .send("GET", "/v1/admin/keys/x", &[("authorization", &admin)], "")
        .await;
    assert_eq!(a.status, 404);
    h.stop().await;
}

#[tokio::test]
async fn oversized_bodies_and_batches_are_413() {
    let h = Harness::start("gw_413", |c| {
        c.body_max_bytes = 4096;
        c.event_max_bytes = 1024;
        c.batch_max_events = 3;
    })
    .await;
    let key = h.key("acme", &[]).await;
    let big: Vec<String> = (0..30)
        .map(|i| event(&format!("x-{i}"), "acme", "bot"))
        .collect();
    let a = h.http().await.batch(&key, &big).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let four: Vec<String> = (0..4)
        .map(|i| event(&format!("y-{i}"), "acme", "bot"))
        .collect();
    let a = h.http().await.batch(&key, &four).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (413, Some("batch_too_large"))
    );
    assert_eq!(h.stored().await, 0);
    h.stop().await;
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let h = Harness::start("gw_429", |c| {
        c.rate_per_key_per_sec = 1;
        c.burst_per_key = 3;
        c.batch_max_events = 3;
    })
    .await;
    let key = h.key("acme", &[]).await;
    let other = h.key("globex", &[]).await;
    let mut http = h.http().await;
    let three: Vec<String> = (0..3)
        .map(|i| event(&format!("r-{i}"), "acme", "bot"))
        .collect();
    assert_eq!(http.batch(&key, &three).await.status, 200);
    let a = http.batch(&key, &[event("r-9", "acme", "bot")]).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    assert_eq!(
        http.batch(&other, &[event("g-1", "globex", "bot")])
            .await
            .status,
        200,
        "other keys are not limited"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_its_body_is_timed_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start("gw_slow", |c| c.body_timeout_ms = 300).await;
    let key = h.key("acme", &[]).await;
    let mut s = tokio::net::TcpStream::connect(h.running.addr)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 100\r\n\r\n{{\"spec"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the gateway must answer and close, not wait forever"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn wrong_media_types_methods_and_paths_have_stable_codes() {
    let h = Harness::start("gw_misc", |_| {}).await;
    let key = h.key("acme", &[]).await;
    let mut http = h.http().await;
    let a = http.events(&key, "text/plain", "x").await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let a = http
        .events(
            &key,
            "application/cloudevents-batch+json",
            "{\"not\":\"array\"}",
        )
        .await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (400, Some("malformed_batch"))
    );
    let a = http
        .events(&key, "application/cloudevents-batch+json", "[]")
        .await;
    assert_eq!(a.json["error"]["code"], "empty_batch");
    let a = http.send("GET", "/v1/events", &[], "").await;
    assert_eq!(a.status, 405);
    let a = http.send("GET", "/nope", &[], "").await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let a = http.send("GET", "/healthz", &[], "").await;
    assert_eq!(a.status, 200);
    h.stop().await;
}

/// Each listener serves its own OpenAPI document without a key (the one its route table is
/// checked against), and only the routes it describes.
#[tokio::test]
async fn each_listener_serves_its_openapi_document_and_only_its_routes() {
    let h = Harness::start("gw_openapi", |_| {}).await;
    let documents = [
        (h.http().await, gateway::server::OPENAPI_PUBLIC),
        (h.admin_http().await, gateway::admin::OPENAPI),
    ];
    for (mut http, text) in documents {
        let a = http.send("GET", "/v1/openapi.json", &[], "").await;
        let served: serde_json::Value = serde_json::from_str(text).expect("JSON");
        assert_eq!((a.status, &a.json), (200, &served));
        // every described GET without parameters answers something other than 404/405
        for (method, path) in tally_platform::openapi::documented(&served) {
            if method == "GET" && !path.contains('{') {
                let a = http.send("GET", &path, &[], "").await;
                assert!(![404, 405].contains(&a.status), "GET {path}: {}", a.status);
            }
        }
    }
    let mut public = h.http().await;
    let a = public.send("GET", "/v1/admin/keys", &[], "").await;
    assert_eq!(a.status, 404, "the admin API is not on the public listener");
    let mut admin = h.admin_http().await;
    let a = admin.send("POST", "/v1/events", &[], "[]").await;
    assert_eq!(a.status, 404, "events are not taken on the admin listener");
    let a = admin.send("DELETE", "/v1/admin/keys", &[], "").await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    h.stop().await;
}

#[tokio::test]
async fn a_key_created_elsewhere_works_at_once_through_a_reload_on_an_unknown_id() {
    let h = Harness::start("gw_reload", |c| c.key_refresh_secs = 3600).await;
    let scope = tally_ingest::gateway::key_store::scope_from("acme", &[], "cli").unwrap();
    let (key, _) = tally_ingest::gateway::key_store::create(&h.env.db(), scope, "cli", 0)
        .await
        .unwrap();
    assert!(h.gw.keys.is_empty(), "the gateway has not seen the key yet");
    let a = h
        .http()
        .await
        .events(
            &key,
            "application/cloudevents+json",
            event("c-1", "acme", "bot"),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    h.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start("gw_slow_headers", |c| c.header_timeout_ms = 300).await;
    let mut s = tokio::net::TcpStream::connect(h.running.addr)
        .await
        .unwrap();
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the gateway must drop a client that never finishes its headers"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start("gw_idle", |c| c.header_timeout_ms = 300).await;
    let mut s = tokio::net::TcpStream::connect(h.running.addr)
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "an idle connection must be closed");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    h.stop().await;
}

#[tokio::test]
async fn with_a_pseudonym_key_only_keyed_hashes_of_customer_and_agent_are_stored() {
    use tally_ingest::pseudonym::Pseudonymizer;
    let key = [7u8; 32];
    let h = Harness::start_mapped(
        "gw_pseudonyms",
        |_| {},
        |gw| gw.with_pseudonyms(Pseudonymizer::new(&key).unwrap()),
    )
    .await;
    let api_key = h.key("acme", &[]).await;
    let body = event_with(
        "p-1",
        "acme",
        "bot-1",
        r#"{"tokens":"12.5","model":"gpt-4o"}"#,
    );
    let a = h
        .http()
        .await
        .events(&api_key, "application/cloudevents+json", body)
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let p = Pseudonymizer::new(&key).unwrap();
    let acme = tally_domain::CustomerId::new("acme").unwrap();
    let (customer, agent) = (
        p.customer(&acme),
        p.agent(&acme, &tally_domain::AgentId::new("bot-1").unwrap()),
    );
    let msg =
        h.js.get_stream(&h.env.nats.stream)
            .await
            .unwrap()
            .get_raw_message(1)
            .await
            .unwrap();
    let stored = String::from_utf8(msg.payload.to_vec()).unwrap();
    assert_eq!(
        msg.subject.as_str(),
        format!("{}.{customer}.{agent}", h.env.nats.subject_prefix)
    );
    assert!(
        !stored.contains("acme") && !stored.contains("bot-1"),
        "{stored}"
    );
    let e = tally_domain::UsageEvent::parse(stored.as_bytes(), 65536).unwrap();
    assert_eq!((e.customer, e.agent), (customer, agent));
    assert_eq!(e.data.get(), r#"{"tokens":"12.5","model":"gpt-4o"}"#);
    h.stop().await;
}

/// Issue 16, finding 9: one address holding every connection with trickling bodies. It gets
/// `connections_per_peer_max`, the rest of its connections are closed at once, and another
/// address is answered while they trickle.
#[tokio::test]
async fn one_address_gets_its_share_of_connections_and_others_are_still_answered() {
    use std::net::{IpAddr, SocketAddr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start("gw_peers", |c| {
        c.connections_max = 8;
        c.connections_per_peer_max = 4;
    })
    .await;
    let key = h.key("acme", &[]).await;
    let head = format!("POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 100\r\n\r\n{{");
    let from = |last: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(IpAddr::from([127, 0, 0, last]), 0))
            .unwrap();
        socket.connect(h.running.addr).await.unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = from(2).await;
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    let mut closed = 0;
    for s in &mut held {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(std::time::Duration::from_millis(300), s.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = r {
            closed += 1;
        }
    }
    assert_eq!(closed, 6, "the four admitted ones are still trickling");
    let mut other = from(3).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        other.read_to_string(&mut answer),
    )
    .await
    .expect("another address is answered at once")
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
    h.stop().await;
}
