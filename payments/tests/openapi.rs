//! The payments service serves its OpenAPI document without a token, and routes only what the
//! document describes: another method of a described path is 405, an undescribed path 404; a
//! refusal and an empty ledger fit the document (the support client checks every JSON answer).

mod support;

use hyper::StatusCode;
use serde_json::Value;
use support::*;
use tally_platform::testkit::TestEnv;

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn the_document_is_served_and_only_its_routes_are_answered() {
    let env = TestEnv::new("payments_openapi").await;
    let server = start(env.db(), wall_ms).await;
    let addr = server.addr;
    let (status, body) = request(addr, "GET", "/v1/openapi.json", &[], Vec::new()).await;
    let served: Value = serde_json::from_slice(&body).expect("JSON");
    let doc: Value = serde_json::from_str(tally_payments::http::routes::OPENAPI).expect("JSON");
    assert_eq!((status, &served), (StatusCode::OK, &doc));

    let (status, body) = api_as(addr, None, "GET", "/v1/ledger/trial-balance", Value::Null).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_token"))
    );
    let (status, body) = api(addr, "GET", "/v1/ledger/trial-balance", Value::Null).await;
    assert_eq!(
        (status, &body["balanced"]),
        (StatusCode::OK, &Value::Bool(true))
    );

    let (status, body) = api(addr, "DELETE", "/v1/payments", Value::Null).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    for path in [
        "/v1/nope",
        "/webhooks/paypal",
        "/portal",
        "/v1/customers/acme",
    ] {
        let (status, body) = api(addr, "GET", path, Value::Null).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{path}"
        );
    }
    drop(server);
    env.cleanup().await;
}

/// Issue 19, item 4: the service is an axum router built from its route table and answers
/// what the hand-written matcher answered, byte for byte: 404 and 405 in the shared shape
/// before any token is asked for; the operator API checks the token before it reads a body
/// (401, not 413, for a stranger's oversized body); a body over 1 MiB is 413; a bad JSON body
/// 400 `bad_request`; the portal's `{id}.pdf` route refuses a bad link as its page does.
#[tokio::test]
async fn the_router_answers_as_the_route_table_did() {
    let env = TestEnv::new("payments_router").await;
    let server = start(env.db(), wall_ms).await;
    let addr = server.addr;
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8");

    let (status, body) = request(addr, "GET", "/v1/nope", &[], Vec::new()).await;
    assert_eq!(
        (status.as_u16(), text(body).as_str()),
        (
            404,
            r#"{"code":"not_found","detail":"GET /v1/nope: no such route; see /v1/openapi.json"}"#
        )
    );
    let (status, body) = request(addr, "DELETE", "/v1/payments", &[], Vec::new()).await;
    assert_eq!(
        (status.as_u16(), text(body).as_str()),
        (
            405,
            r#"{"code":"method_not_allowed","detail":"DELETE /v1/payments"}"#
        )
    );
    let large = vec![b'x'; tally_payments::http::server::BODY_BYTES_MAX + 1];
    let (status, _) = request(addr, "POST", "/v1/refunds", &[], large.clone()).await;
    assert_eq!(status.as_u16(), 401, "the token is checked first");
    let (status, body) = request(addr, "POST", "/webhooks/stripe", &[], large).await;
    assert_eq!(
        (status.as_u16(), text(body).as_str()),
        (
            413,
            r#"{"code":"body_too_large","detail":"request body: length limit exceeded (limit 1048576 bytes)"}"#
        )
    );
    let (status, body) = api(addr, "POST", "/v1/refunds", serde_json::json!({"x": 1})).await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, body) = api(addr, "GET", "/v1/invoices/in_none/", Value::Null).await;
    assert_eq!(
        (status.as_u16(), &body),
        (
            404,
            &serde_json::json!({"code": "not_found", "detail": "invoice in_none"})
        )
    );
    for path in [
        "/portal/bad",
        "/portal/bad/invoices/x",
        "/portal/bad/invoices/x.pdf",
    ] {
        let (status, body) = request(addr, "GET", path, &[], Vec::new()).await;
        assert_eq!(status.as_u16(), 403, "{path}");
        assert!(text(body).contains("<html"), "{path}: the refusal page");
    }
    drop(server);
    env.cleanup().await;
}
