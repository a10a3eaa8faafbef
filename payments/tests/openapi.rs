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
