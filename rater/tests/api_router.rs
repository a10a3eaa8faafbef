//! Issue 19, item 4: the rater's API is an axum router built from its route table
//! (`tally_rater::api::router`) on the shared server, and answers what the hand-written
//! matcher answered, byte for byte: the token is checked before the route is looked up (401
//! for a stranger on an unknown path, as before); with a token, 404 and 405 in the shared
//! shape; the token is checked before a body is read (401, not 413, for a stranger's
//! oversized body); a body over 1 MiB is 413; a bad JSON body is 400 with the route's own
//! code; a bad customer in the path is refused before the body is read; path parameters and
//! the raw query reach the handlers. The spend service's API (`tally_rater::live::api`) is
//! built the same way and pinned the same way. Over a real socket, ClickHouse (the test's
//! database) and NATS.

mod common;

use std::net::SocketAddr;

use std::sync::Arc;

use common::http::{exchange, start, token};
use tally_platform::auth::{Authenticator, Role};
use tally_platform::shutdown::Shutdown;
use tally_rater::live::api::{serve, SpendApi};

/// `method` `path` with `body` and `token`, raw; (status, body as text).
async fn raw(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let text = exchange(addr, token, method, path, body).await;
    let status = text[9..12].parse().expect("a status");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// The refusal of a request without a token.
const MISSING: &str =
    r#"{"code":"missing_token","detail":"header `Authorization: Bearer <token>` is missing"}"#;

/// What an API of the rater answers before its handlers run: a stranger 401 for an unknown
/// path, for `method` on `path` (a method the path does not serve) and for an oversized body
/// to the change route `change` (the token before the body); with `token`, 404 and 405 in the
/// shared shape and 413 for a body over 1 MiB.
async fn unrouted(
    addr: SocketAddr,
    token: &str,
    (method, path): (&str, &str),
    (change_method, change): (&str, &str),
) {
    let large = vec![b' '; tally_rater::api::BODY_BYTES_MAX + 1];
    for (method, path, body) in [
        ("GET", "/v1/nope", &[][..]),
        (method, path, &[][..]),
        (change_method, change, &large[..]),
    ] {
        assert_eq!(
            raw(addr, None, method, path, body).await,
            (401, MISSING.to_owned()),
            "{method} {path}"
        );
        // a stranger learns nothing of the routes: no `Allow` on the 401
        let answer = exchange(addr, None, method, path, body)
            .await
            .to_lowercase();
        assert!(!answer.contains("\r\nallow:"), "{method} {path}: {answer}");
    }
    let t = Some(token);
    assert_eq!(
        raw(addr, t, "GET", "/v1/nope", b"").await,
        (
            404,
            r#"{"code":"not_found","detail":"GET /v1/nope: no such route; see /v1/openapi.json"}"#
                .to_owned()
        )
    );
    assert_eq!(
        raw(addr, t, method, path, b"").await,
        (
            405,
            format!(r#"{{"code":"method_not_allowed","detail":"{method} {path}"}}"#)
        )
    );
    assert_eq!(
        raw(addr, t, change_method, change, &large).await,
        (
            413,
            r#"{"code":"body_too_large","detail":"request body: length limit exceeded (limit 1048576 bytes)"}"#
                .to_owned()
        )
    );
}

/// `GET` of each of `paths`, whose path parameter names nothing (empty, or not UTF-8 once
/// percent-decoded), is the 404 of an unknown path in the shared shape (axum alone would hand
/// the empty one to the handler and refuse the other in plain text).
async fn names_nothing(addr: SocketAddr, token: &str, paths: &[&str]) {
    for path in paths {
        assert_eq!(
            raw(addr, Some(token), "GET", path, b"").await,
            (
                404,
                format!(
                    r#"{{"code":"not_found","detail":"GET {path}: no such route; see /v1/openapi.json"}}"#
                )
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_answers_as_the_route_table_did() {
    let env = tally_platform::testkit::TestEnv::new("rater_api_router").await;
    let db = env.db();
    let admin = token(&db, "ada", Role::Admin).await;
    let operator = token(&db, "otto", Role::InvoiceOperator).await;
    let (addr, stop, server) = start(db.clone()).await;
    let t = Some(admin.as_str());

    // before the handlers: 401 for strangers (the OpenAPI document excepted), 404, 405, 413
    unrouted(addr, &admin, ("DELETE", "/v1/plans"), ("POST", "/v1/plans")).await;
    names_nothing(
        addr,
        &admin,
        &[
            "/v1/customers//agents",
            "/v1/customers//corrections",
            "/v1/plans/%FF",
        ],
    )
    .await;
    assert_eq!(
        raw(addr, None, "GET", "/v1/plans", b"").await,
        (401, MISSING.to_owned())
    );
    let (status, doc) = raw(addr, None, "GET", "/v1/openapi.json", b"").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
    let served: serde_json::Value = serde_json::from_str(tally_rater::api::OPENAPI).expect("JSON");
    assert_eq!(doc, served);
    // a change by a role that may not make it is refused by role, whatever the method
    let (status, body) = raw(addr, Some(&operator), "PUT", "/v1/plans", b"").await;
    assert_eq!(
        (status, body.contains("\"forbidden\"")),
        (403, true),
        "{body}"
    );

    // a bad body answers the route's own code
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
    let large = vec![b' '; tally_rater::api::BODY_BYTES_MAX + 1];
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
    // what axum brought (CHANGELOG): HEAD is answered on a GET route, and a path parameter is
    // percent-decoded before it is read
    assert_eq!(
        raw(addr, t, "HEAD", "/v1/plans", b"").await,
        (200, String::new())
    );
    assert_eq!(
        raw(addr, t, "GET", "/v1/plans/p%72o", b"").await,
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

/// The spend API over the test's database and NATS, its decider subjects the test's own (none
/// answers); (address, stop, server).
async fn start_spend(
    env: &tally_platform::testkit::TestEnv,
) -> (SocketAddr, Shutdown, tokio::task::JoinHandle<()>) {
    let db = env.db();
    let nats = async_nats::connect(&env.nats.url).await.expect("NATS");
    let auth = Arc::new(Authenticator::new("spend", db.clone()));
    auth.reload().await.expect("tokens load");
    let state = Arc::new(SpendApi {
        db,
        nats,
        subject_root: env.nats.subject_prefix.clone(),
        auth,
        now_ms: || 1_794_268_800_000,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    let stop = Shutdown::new();
    let server = tokio::spawn(serve(listener, state, stop.clone()));
    (addr, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spend_router_answers_as_the_route_table_did() {
    let env = tally_platform::testkit::TestEnv::new("spend_api_router").await;
    let db = env.db();
    let admin = token(&db, "ada", Role::Admin).await;
    let reader = token(&db, "rita", Role::Reader).await;
    let (addr, stop, server) = start_spend(&env).await;
    let t = Some(admin.as_str());
    let budget = "/v1/customers/acme/budgets/monthly";

    // before the handlers: 401 for strangers (the OpenAPI document excepted), 404, 405, 413
    unrouted(addr, &admin, ("GET", budget), ("PUT", budget)).await;
    names_nothing(
        addr,
        &admin,
        &["/v1/customers//balance", "/v1/customers/%FF/balance"],
    )
    .await;
    assert_eq!(
        raw(addr, None, "POST", budget, b"").await,
        (401, MISSING.to_owned())
    );
    assert_eq!(
        raw(addr, None, "GET", "/v1/openapi.json", b"").await,
        (200, tally_rater::live::api::OPENAPI.to_owned())
    );
    let (status, body) = raw(addr, Some(&reader), "PUT", budget, b"{}").await;
    assert_eq!(
        (status, body.contains("\"forbidden\"")),
        (403, true),
        "{body}"
    );

    // the customer is refused before the body is read (400, not 413); a bad body answers the
    // route's own code
    let large = vec![b' '; tally_rater::api::BODY_BYTES_MAX + 1];
    let (status, body) = raw(addr, t, "PUT", "/v1/customers/a!b/budgets/x", &large).await;
    assert_eq!(
        (status, body.contains("\"invalid_customer\"")),
        (400, true),
        "{body}"
    );
    assert_eq!(
        raw(addr, t, "PUT", budget, b"{").await,
        (
            400,
            r#"{"code":"invalid_budget","detail":"EOF while parsing an object at line 1 column 1"}"#
                .to_owned()
        )
    );

    // both path parameters reach the handlers
    assert_eq!(
        raw(addr, t, "DELETE", budget, b"").await,
        (
            404,
            r#"{"code":"not_found","detail":"no budget \"monthly\""}"#.to_owned()
        )
    );
    let (status, body) = raw(
        addr,
        t,
        "PUT",
        budget,
        br#"{"kind":"amount","limit":"0.50"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let put: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (&put["customer"], &put["budget_id"], &put["limit"]),
        (
            &serde_json::json!("acme"),
            &serde_json::json!("monthly"),
            &serde_json::json!("0.50")
        )
    );
    let (status, listed) = raw(addr, t, "GET", "/v1/customers/acme/budgets/", b"").await;
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!((status, listed), (200, serde_json::json!([put])));
    assert_eq!(
        raw(addr, t, "DELETE", budget, b"").await,
        (200, r#"{"deleted":"monthly"}"#.to_owned())
    );
    assert_eq!(
        raw(addr, t, "GET", "/v1/customers/acme/balance", b"").await,
        (
            503,
            r#"{"code":"unavailable","detail":"no spend decider answered"}"#.to_owned()
        )
    );
    let audited = tally_platform::auth::audit::of_service(&db, "spend")
        .await
        .expect("audit");
    let audited: Vec<(&str, &str, u16)> = audited
        .iter()
        .map(|r| (r.actor.as_str(), r.method.as_str(), r.status))
        .collect();
    assert!(
        audited.contains(&("api:ada", "PUT", 200)) && audited.contains(&("api:ada", "DELETE", 200)),
        "{audited:?}"
    );

    stop.cancel();
    server.await.expect("stops");
    env.cleanup().await;
}
