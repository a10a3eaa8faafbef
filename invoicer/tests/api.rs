//! The invoicer's HTTP API over the real ClickHouse and NATS: a manual run finalizes and
//! numbers an invoice; the invoice reads back as JSON (with its lifecycle), HTML and PDF;
//! a line's lineage lists its usage windows and event ids; credit notes are idempotent and
//! bounded by the invoice total; lifecycle changes are appended and refused when not allowed.
//! Every route but the OpenAPI document needs a bearer token whose role allows the request;
//! changes carry the token's actor and are audited.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tally_invoicer::api::{self, ApiState};
use tally_invoicer::numbering::Numbers;
use tally_invoicer::InvoicerConfig;
use tally_platform::auth::{self, audit, Authenticator, Role};
use tally_platform::openapi;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: i64 = 86_400;

/// The `admin` token of each server [`start`] started.
static TOKENS: Mutex<BTreeMap<SocketAddr, String>> = Mutex::new(BTreeMap::new());

/// A token of `role` for `actor`, stored in `db`.
async fn token(db: &clickhouse::Client, actor: &str, role: Role) -> String {
    auth::store::create(db, actor, role, "test", 0)
        .await
        .expect("token created")
        .0
}

/// The API over `db` and `numbers` on a free port, with an `admin` token for [`call`].
async fn start(
    db: &clickhouse::Client,
    numbers: Numbers,
) -> (SocketAddr, Shutdown, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admin = token(db, "test-admin", Role::Admin).await;
    TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr, admin);
    let auth = Arc::new(Authenticator::new("invoicer", db.clone()));
    auth.reload().await.expect("tokens load");
    let stop = Shutdown::new();
    let state = Arc::new(ApiState {
        db: db.clone(),
        numbers,
        cfg: InvoicerConfig::default(),
        now_ms: || chrono::Utc::now().timestamp_millis(),
        auth,
    });
    (
        addr,
        stop.clone(),
        tokio::spawn(api::serve(listener, state, stop)),
    )
}

/// One HTTP/1.1 request as the server's admin; the status and the body.
async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
    let admin = TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&addr)
        .cloned();
    call_as(addr, admin.as_deref(), method, path, body).await
}

/// One HTTP/1.1 request with `token` (none: no `Authorization`); the status and the body.
async fn call_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    req_body: &str,
) -> (u16, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let authorization = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\n{authorization}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{req_body}",
        req_body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status: u16 = head[9..12].parse().expect("status");
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    // every JSON exchange with a described route must fit the OpenAPI document
    if head
        .to_ascii_lowercase()
        .contains("content-type: application/json")
    {
        let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).expect("JSON");
        let answer = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let sent = serde_json::from_str(req_body).ok();
        let fits = openapi::check_exchange(&doc, method, path, sent.as_ref(), status, &answer);
        if let Err(e) = fits {
            panic!("the answer does not fit the OpenAPI document: {e}");
        }
    }
    (status, body)
}

/// `POST /v1/invoices/{id}/{what}`.
async fn post(addr: std::net::SocketAddr, id: &str, what: &str, body: &str) -> (u16, Vec<u8>) {
    call(addr, "POST", &format!("/v1/invoices/{id}/{what}"), body).await
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn api_serves_invoices_renderings_lineage_credit_notes_and_lifecycle() {
    let env = TestEnv::new("invoicer_api").await;
    let db = env.db();
    let now = chrono::Utc::now().timestamp();
    let (start, end) = (now - 32 * DAY, now - 2 * DAY);
    let window = start + 3_600;
    // committed usage (two events in one window) and the charge the rater made of it
    db.query(&format!(
        "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, window_start, window_secs, time_ms, \
         group_names, group_values, group_key, value, unique_value, batch_id, inserted_at) VALUES \
         ('acme', 'bot-1', 'evt-1', 'llm_tokens', 'SUM', toDateTime({window}), 3600, {w1}, [], [], '', toDecimal128(600, 9), '', 'b1', now()), \
         ('acme', 'bot-1', 'evt-2', 'llm_tokens', 'SUM', toDateTime({window}), 3600, {w2}, [], [], '', toDecimal128(400, 9), '', 'b1', now())",
        w1 = window * 1000 + 5,
        w2 = window * 1000 + 9,
    ))
    .execute()
    .await
    .expect("readings");
    tally_platform::testkit::fold_readings(&db, "b1").await;
    db.query(&format!(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, group_key, plan_id, plan_version, \
         price_model, currency, quantity, unit_price, tiers, amount_minor, amount_before_discounts_minor, tax_rate, tax_minor, \
         windows, usage_from, usage_to, computed_at, version) VALUES \
         ('chg-1', 'acme', toDateTime({start}), toDateTime({end}), 'llm_tokens', '{{}}', 'ai', 2, 'per_unit', 'EUR', \
          toDecimal128(1000, 9), '0.01', '[]', 1000, 1000, '19', 190, 1, toDateTime({start}), toDateTime({end}), now(), 1)"
    ))
    .execute()
    .await
    .expect("charge");

    let bucket = format!("N{}", env.nats.stream);
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let numbers = Numbers::open(client.clone(), &bucket)
        .await
        .expect("bucket");
    let (addr, stop, server) = self::start(&db, numbers).await;

    let (status, body) = call(addr, "POST", "/v1/runs", "").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let run = json(&body);
    assert_eq!(run["finalized"], 1);
    let id = run["invoice_ids"][0].as_str().expect("id").to_owned();

    let (status, body) = call(addr, "GET", "/v1/invoices?customer=acme", "").await;
    assert_eq!(status, 200);
    let list = json(&body);
    assert_eq!(list[0]["number"], "INV-000001");
    assert_eq!(list[0]["total_minor"], 1190);
    assert_eq!(list[0]["tax_minor"], 190);

    let (status, body) = call(addr, "GET", &format!("/v1/invoices/{id}"), "").await;
    assert_eq!(status, 200);
    let doc = json(&body);
    assert_eq!(doc["lifecycle_status"], "finalized");
    assert_eq!(doc["transitions"][0]["actor"], "invoicer");
    assert_eq!(doc["lines"][0]["charge_id"], "chg-1");
    assert_eq!(doc["lines"][0]["plan_version"], 2);
    assert_eq!(doc["taxes"][0]["rate_percent"], "19");

    let (status, html) = call(addr, "GET", &format!("/v1/invoices/{id}.html"), "").await;
    assert_eq!(status, 200);
    let html = String::from_utf8_lossy(&html);
    assert!(
        html.contains("Invoice INV-000001") && html.contains("11.90 EUR"),
        "{html}"
    );
    let (status, pdf) = call(addr, "GET", &format!("/v1/invoices/{id}.pdf"), "").await;
    assert_eq!(status, 200);
    assert!(pdf.starts_with(b"%PDF-"));

    let (status, body) = call(
        addr,
        "GET",
        &format!("/v1/invoices/{id}/lines/1/lineage"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let lineage = json(&body);
    assert_eq!(lineage["windows"].as_array().map(Vec::len), Some(1));
    assert_eq!(lineage["windows"][0]["quantity"], "1000");
    let events: Vec<&str> = lineage["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(events, vec!["evt-1", "evt-2"]);
    let (status, _) = call(
        addr,
        "GET",
        &format!("/v1/invoices/{id}/lines/9/lineage"),
        "",
    )
    .await;
    assert_eq!(status, 404);

    let note = r#"{"key":"k1","amount_minor":100,"tax_minor":19,"reason":"goodwill"}"#;
    let (status, body) = post(addr, &id, "credit_notes", note).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let first = json(&body);
    assert_eq!(
        first["actor"], "api:test-admin",
        "the token's actor, not the client's"
    );
    let (status, body) = post(addr, &id, "credit_notes", note).await;
    assert_eq!(status, 200, "the same key issues once");
    assert_eq!(json(&body)["credit_note_id"], first["credit_note_id"]);
    let too_much = r#"{"key":"k2","amount_minor":1100,"reason":"x"}"#;
    let (status, _) = post(addr, &id, "credit_notes", too_much).await;
    assert_eq!(status, 409);
    // Issue 16, finding 10: i64::MAX + 1 wrapped negative and passed both guards (the
    // "not both zero" and the "not above the invoice total" check): a note of 2^63 - 1
    let overflow = r#"{"key":"k3","amount_minor":9223372036854775807,"tax_minor":1,"reason":"x"}"#;
    let (status, body) = post(addr, &id, "credit_notes", overflow).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["code"], "invalid_body");
    let (_, body) = call(addr, "GET", &format!("/v1/invoices/{id}/credit_notes"), "").await;
    assert_eq!(
        json(&body).as_array().map(Vec::len),
        Some(1),
        "nothing was issued"
    );
    let claimed = r#"{"amount_minor":1,"reason":"x","actor":"payments:stripe"}"#;
    let (status, body) = post(addr, &id, "credit_notes", claimed).await;
    assert_eq!(status, 400, "an actor is not the client's to name");
    assert!(String::from_utf8_lossy(&body).contains("actor"));
    let bad = r#"{"amount_minor":"ten","reason":"x"}"#;
    let (status, body) = post(addr, &id, "credit_notes", bad).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("amount_minor"));

    let paid = r#"{"status":"paid","reason":"transfer 42"}"#;
    let (status, body) = post(addr, &id, "status", paid).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["actor"], "api:test-admin");
    let (status, _) = post(addr, &id, "status", r#"{"status":"void"}"#).await;
    assert_eq!(status, 409, "a paid invoice cannot be voided");
    let (status, _) = post(addr, &id, "status", r#"{"status":"draft"}"#).await;
    assert_eq!(status, 400);
    let st: String = db
        .query("SELECT status FROM v_invoices WHERE invoice_id = ?")
        .bind(&id)
        .fetch_one()
        .await
        .expect("status");
    assert_eq!(st, "paid");

    let (status, body) = call(addr, "GET", "/v1/openapi.json", "").await;
    assert_eq!(status, 200);
    assert!(json(&body)["paths"]["/v1/invoices/{id}/lines/{n}/lineage"].is_object());
    let (status, _) = call(addr, "GET", "/v1/nothing", "").await;
    assert_eq!(status, 404);

    stop.cancel();
    let _ = server.await;
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(&bucket)
        .await;
    env.cleanup().await;
}

/// Issue 16, finding 5: the invoicer's API listed every customer's invoices, granted credit
/// and ran passes for anyone who reached it. Now a stranger gets 401, a token beyond its role
/// 403, and what an invoice operator changes is audited under its actor.
#[tokio::test]
async fn only_a_token_whose_role_allows_it_reads_or_changes_invoices() {
    let env = TestEnv::new("invoicer_api_auth").await;
    let db = env.db();
    let bucket = format!("N{}", env.nats.stream);
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let numbers = Numbers::open(client.clone(), &bucket)
        .await
        .expect("bucket");
    let reader = token(&db, "rita", Role::Reader).await;
    let editor = token(&db, "erin", Role::CatalogEditor).await;
    let payer = token(&db, "pat", Role::PaymentsOperator).await;
    let operator = token(&db, "olga", Role::InvoiceOperator).await;
    let (addr, stop, server) = start(&db, numbers).await;
    let grant = r#"{"grant_id":"g-1","customer":"acme","currency":"EUR","amount_minor":5000}"#;

    for (method, path, body) in [
        ("GET", "/v1/invoices", ""),
        ("GET", "/v1/invoices/inv_x.pdf", ""),
        ("POST", "/v1/credits", grant),
        ("POST", "/v1/runs", ""),
        ("POST", "/v1/invoices/inv_x/status", r#"{"status":"void"}"#),
    ] {
        let (status, body) = call_as(addr, None, method, path, body).await;
        assert_eq!(
            (status, json(&body)["code"].as_str()),
            (401, Some("missing_token")),
            "{method} {path}"
        );
    }
    let (status, _) = call_as(addr, Some(&reader), "GET", "/v1/invoices", "").await;
    assert_eq!(status, 200, "a reader reads");
    for (who, method, path, body) in [
        (&reader, "POST", "/v1/credits", grant),
        (&reader, "POST", "/v1/runs", ""),
        (
            &editor,
            "POST",
            "/v1/invoices/inv_x/status",
            r#"{"status":"void"}"#,
        ),
        (&payer, "POST", "/v1/credits", grant),
    ] {
        let (status, body) = call_as(addr, Some(who), method, path, body).await;
        assert_eq!(
            (status, json(&body)["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}"
        );
    }
    let granted: u64 = db
        .query("SELECT count() FROM credit_grants")
        .fetch_one()
        .await
        .expect("grants");
    assert_eq!(granted, 0, "no refused request granted credit");

    let (status, body) = call_as(addr, Some(&operator), "POST", "/v1/credits", grant).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let rows = audit::of_service(&db, "invoicer").await.expect("audit");
    let seen: Vec<(&str, &str, &str, u16)> = rows
        .iter()
        .map(|r| (r.actor.as_str(), r.role.as_str(), r.path.as_str(), r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("api:olga", "invoice_operator", "/v1/credits", 0),
            ("api:olga", "invoice_operator", "/v1/credits", 201),
        ]
    );

    let (status, body) = call_as(addr, None, "GET", "/v1/openapi.json", "").await;
    assert_eq!(status, 200);
    let doc = json(&body);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["type"],
        "http"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));

    stop.cancel();
    let _ = server.await;
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(&bucket)
        .await;
    env.cleanup().await;
}

/// Issue 19, item 4: the API is an axum router built from its route table, and answers what
/// the hand-written matcher answered, byte for byte: an unknown path is refused 401 before
/// anyone learns it does not exist, then 404 in the shared shape; a served path with another
/// method 405; `{id}.pdf` and `{id}.html` are the invoice `{id}` rendered; a body over 64 KiB
/// 413, one that is not the route's JSON 400 naming the field; a trailing slash is the same
/// route.
#[tokio::test]
async fn the_router_answers_as_the_route_table_did() {
    let env = TestEnv::new("invoicer_api_router").await;
    let db = env.db();
    let bucket = format!("N{}", env.nats.stream);
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let numbers = Numbers::open(client.clone(), &bucket)
        .await
        .expect("bucket");
    let (addr, stop, server) = start(&db, numbers).await;
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8");

    let (status, body) = call_as(addr, None, "GET", "/v1/nothing", "").await;
    assert_eq!(status, 401, "{}", text(body));
    let (status, body) = call(addr, "GET", "/v1/nothing", "").await;
    assert_eq!(
        (status, text(body).as_str()),
        (
            404,
            r#"{"code":"not_found","detail":"GET /v1/nothing: no such route; see /v1/openapi.json"}"#
        )
    );
    let (status, body) = call(addr, "DELETE", "/v1/invoices", "").await;
    assert_eq!(
        (status, text(body).as_str()),
        (
            405,
            r#"{"code":"method_not_allowed","detail":"DELETE /v1/invoices"}"#
        )
    );
    // a stranger learns nothing of the routes: the 401 carries no `Allow` of a method router
    for (method, path) in [("DELETE", "/v1/invoices"), ("PUT", "/v1/invoices/inv_none")] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let answer = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(
            answer.starts_with("http/1.1 401"),
            "{method} {path}: {answer}"
        );
        assert!(!answer.contains("\r\nallow:"), "{method} {path}: {answer}");
    }
    for path in [
        "/v1/invoices/inv_none",
        "/v1/invoices/inv_none.json",
        "/v1/invoices/inv_none.pdf",
        "/v1/invoices/inv_none.html",
        "/v1/invoices/inv_none/",
    ] {
        let (status, body) = call(addr, "GET", path, "").await;
        assert_eq!(
            (status, text(body).as_str()),
            (
                404,
                r#"{"code":"invoice_not_found","detail":"invoice \"inv_none\" does not exist"}"#
            ),
            "{path}"
        );
    }
    let (status, body) = call(addr, "GET", "/v1/invoices/.pdf", "").await;
    assert_eq!(
        (status, text(body).as_str()),
        (
            404,
            r#"{"code":"invoice_not_found","detail":"invoice \".pdf\" does not exist"}"#
        )
    );
    let (status, body) = call(addr, "GET", "/v1/invoices/inv_none/lines/x/lineage", "").await;
    assert_eq!(
        (status, text(body).as_str()),
        (
            400,
            r#"{"code":"invalid_line","detail":"line number \"x\" is not a positive integer"}"#
        )
    );
    let large = format!(r#"{{"reason":"{}"}}"#, "x".repeat(api::BODY_BYTES_MAX));
    let (status, body) = call(addr, "POST", "/v1/invoices/inv_none/status", &large).await;
    assert_eq!(
        (status, text(body).as_str()),
        (
            413,
            r#"{"code":"body_too_large","detail":"request body: length limit exceeded (limit 65536 bytes)"}"#
        )
    );
    let (status, body) = call(
        addr,
        "POST",
        "/v1/invoices/inv_none/status",
        r#"{"status":7}"#,
    )
    .await;
    assert_eq!(status, 400, "{}", text(body.clone()));
    assert!(
        text(body).starts_with(r#"{"code":"invalid_body","detail":"field status: "#),
        "the field is named"
    );

    stop.cancel();
    let _ = server.await;
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(&bucket)
        .await;
    env.cleanup().await;
}
