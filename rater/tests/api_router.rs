//! Issue 19, item 4: the rater's API is an axum router built from its route table
//! (`tally_rater::api::router`) on the shared server, and answers what the hand-written
//! matcher answered, byte for byte: the token is checked before the route is looked up (401
//! for a stranger on an unknown path, as before); with a token, 404 and 405 in the shared
//! shape; the token is checked before a body is read (401, not 413, for a stranger's
//! oversized body); a body over 1 MiB is 413; a bad JSON body is 400 with the route's own
//! code; a bad customer in the path is refused before the body is read; path parameters and
//! the raw query reach the handlers. Over a real socket and ClickHouse (the test's database).

mod common;

use std::net::SocketAddr;

use common::http::{start, token};
use tally_platform::auth::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `method` `path` with `body` and `token`, raw; (status, body as text).
async fn raw(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("writes");
    // the server may answer (and close) before it read an oversized body
    let _ = s.write_all(body).await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8(answer).expect("UTF-8");
    let status = text[9..12].parse().expect("a status");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_answers_as_the_route_table_did() {
    let env = tally_platform::testkit::TestEnv::new("rater_api_router").await;
    let db = env.db();
    let admin = token(&db, "ada", Role::Admin).await;
    let operator = token(&db, "otto", Role::InvoiceOperator).await;
    let (addr, stop, server) = start(db.clone()).await;
    let t = Some(admin.as_str());

    // strangers are refused before the route is looked up, the OpenAPI document excepted
    let missing =
        r#"{"code":"missing_token","detail":"header `Authorization: Bearer <token>` is missing"}"#;
    for (method, path) in [
        ("GET", "/v1/nope"),
        ("DELETE", "/v1/plans"),
        ("GET", "/v1/plans"),
    ] {
        assert_eq!(
            raw(addr, None, method, path, b"").await,
            (401, missing.to_owned()),
            "{method} {path}"
        );
    }
    let (status, doc) = raw(addr, None, "GET", "/v1/openapi.json", b"").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
    let served: serde_json::Value = serde_json::from_str(tally_rater::api::OPENAPI).expect("JSON");
    assert_eq!(doc, served);

    // with a token: 404 and 405 in the shared shape
    assert_eq!(
        raw(addr, t, "GET", "/v1/nope", b"").await,
        (
            404,
            r#"{"code":"not_found","detail":"GET /v1/nope: no such route; see /v1/openapi.json"}"#
                .to_owned()
        )
    );
    assert_eq!(
        raw(addr, t, "DELETE", "/v1/plans", b"").await,
        (
            405,
            r#"{"code":"method_not_allowed","detail":"DELETE /v1/plans"}"#.to_owned()
        )
    );
    // a reader's change of an unknown method is refused by role first
    let (status, body) = raw(addr, Some(&operator), "PUT", "/v1/plans", b"").await;
    assert_eq!(
        (status, body.contains("\"forbidden\"")),
        (403, true),
        "{body}"
    );

    // bodies: the token before the body, then the 1 MiB limit, then the route's own code
    let large = vec![b' '; tally_rater::api::BODY_BYTES_MAX + 1];
    let (status, body) = raw(addr, None, "POST", "/v1/plans", &large).await;
    assert_eq!(
        (status, body.as_str()),
        (401, missing),
        "the token is checked first"
    );
    assert_eq!(
        raw(addr, t, "POST", "/v1/plans", &large).await,
        (
            413,
            r#"{"code":"body_too_large","detail":"request body: length limit exceeded (limit 1048576 bytes)"}"#
                .to_owned()
        )
    );
    assert_eq!(
        raw(addr, t, "POST", "/v1/plans", b"{").await,
        (
            400,
            r#"{"code":"invalid_plan","detail":"EOF while parsing an object at line 1 column 1"}"#
                .to_owned()
        )
    );
    assert_eq!(
        raw(addr, Some(&operator), "POST", "/v1/corrections", b"1").await,
        (
            400,
            r#"{"code":"invalid_correction","detail":"invalid type: integer `1`, expected struct CorrectionRequest at line 1 column 1"}"#
                .to_owned()
        )
    );
    // the path's customer is refused before the body is read (400, not 413)
    let (status, body) = raw(addr, t, "POST", "/v1/customers/a!b/agents", &large).await;
    assert_eq!(
        (status, body.contains("\"invalid_customer\"")),
        (400, true),
        "{body}"
    );

    // path parameters, trailing slashes and raw queries reach the handlers
    assert_eq!(
        raw(addr, t, "GET", "/v1/plans/", b"").await,
        (200, "[]".to_owned())
    );
    assert_eq!(
        raw(addr, t, "GET", "/v1/plans/pro", b"").await,
        (
            404,
            r#"{"code":"not_found","detail":"no plan \"pro\""}"#.to_owned()
        )
    );
    assert_eq!(
        raw(addr, t, "GET", "/v1/meters/calls", b"").await,
        (
            404,
            r#"{"code":"not_found","detail":"no meter \"calls\""}"#.to_owned()
        )
    );
    assert_eq!(
        raw(addr, t, "GET", "/v1/meters/calls/query?customer=acme", b"").await,
        (
            404,
            r#"{"code":"not_found","detail":"no meter \"calls\""}"#.to_owned()
        )
    );
    assert_eq!(
        raw(
            addr,
            t,
            "GET",
            "/v1/customers/acme/corrections?limit=0",
            b""
        )
        .await,
        (
            400,
            r#"{"code":"invalid_parameter","detail":"limit: 1 to 1000, not \"0\""}"#.to_owned()
        )
    );
    assert_eq!(
        raw(addr, t, "GET", "/v1/customers/acme/agents", b"").await,
        (
            404,
            r#"{"code":"not_found","detail":"no customer acme"}"#.to_owned()
        )
    );
    assert_eq!(
        raw(addr, t, "GET", "/v1/charges/ch_1/explain", b"").await,
        (
            404,
            r#"{"code":"not_found","detail":"no charge ch_1"}"#.to_owned()
        )
    );

    stop.cancel();
    server.await.expect("stops");
    env.cleanup().await;
}
