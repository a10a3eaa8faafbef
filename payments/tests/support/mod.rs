//! Shared by the integration tests: invoices built and stored by the real invoicer code, the
//! payments server started on a free port over the test's ClickHouse database (with an `admin`
//! API token for actor `ops@example.com`, which [`api`] sends), a small HTTP client, a local
//! receiver for notifications, and Stripe-signed webhook bodies.

#![allow(dead_code)]

pub mod cdp;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rust_decimal::Decimal;
use tally_domain::Period;
use tally_invoice::invoice::{build, ChargeLine, Terms};
use tally_invoice::Invoice;
use tally_payments::config::{PortalConfig, SecretString};
use tally_payments::gateway::stripe::Stripe;
use tally_payments::http::{serve, AppState};
use tally_payments::settle::Settler;
use tally_payments::signature::{self, Secret};
use tally_platform::auth::{self, Authenticator, Role};
use tally_platform::shutdown::Shutdown;
use tokio::net::{TcpListener, TcpStream};

pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789";
pub const PORTAL_SECRET: &str = "portal_test_secret";
/// The actor of the `admin` token [`start`] creates.
pub const OPERATOR: &str = "ops@example.com";

/// The `admin` token of each server [`start`] started.
static TOKENS: Mutex<BTreeMap<SocketAddr, String>> = Mutex::new(BTreeMap::new());

/// A token of `role` for `actor`, stored in `db`.
pub async fn token(db: &clickhouse::Client, actor: &str, role: Role) -> String {
    auth::store::create(db, actor, role, "test", 0)
        .await
        .expect("token created")
        .0
}
pub const DAY_MS: i64 = 86_400_000;

/// Midnight UTC `days` days before now: invoice periods are placed relative to the clock, so
/// they are over (finalized, past due) whenever the tests run.
pub fn days_ago_ms(days: i64) -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    now - now.rem_euclid(DAY_MS) - days * DAY_MS
}

/// A finalized invoice of `customer` for the period starting at `start_ms` (30 days), one line
/// per `(meter, amount_minor, tax_minor)`, built and stored by the invoicer.
pub async fn invoice(
    db: &clickhouse::Client,
    customer: &str,
    currency: &str,
    start_ms: i64,
    lines: &[(&str, i64, i64)],
    now_ms: i64,
) -> Invoice {
    invoice_with_credit(db, customer, currency, start_ms, lines, 0, now_ms).await
}

/// As [`invoice`], with `credit_minor` of prepaid credit available to apply.
pub async fn invoice_with_credit(
    db: &clickhouse::Client,
    customer: &str,
    currency: &str,
    start_ms: i64,
    lines: &[(&str, i64, i64)],
    credit_minor: i64,
    now_ms: i64,
) -> Invoice {
    let period = Period {
        start_ms,
        end_ms: start_ms + 30 * DAY_MS,
    };
    let charges: Vec<ChargeLine> = lines
        .iter()
        .map(|(meter, minor, tax)| ChargeLine {
            charge_id: format!("chg_{customer}_{meter}_{start_ms}"),
            customer: tally_domain::CustomerId::new(customer).expect("a customer id"),
            period,
            meter: (*meter).into(),
            group_key: "{}".into(),
            group_names: vec![],
            group_values: vec![],
            plan_id: "standard".into(),
            plan_version: 1,
            price_model: "per_unit".into(),
            currency: currency.parse().expect("a currency"),
            quantity: Decimal::from(*minor),
            unit_price: "0.01".into(),
            tiers_json: "[]".into(),
            amount_minor: *minor,
            amount_before_discounts_minor: *minor,
            tax_rate: if *tax > 0 { "10".into() } else { String::new() },
            tax_minor: *tax,
        })
        .collect();
    let terms = Terms {
        grace_ms: 0,
        payment_terms_days: 14,
        credit_available_minor: credit_minor,
        ..Terms::default()
    };
    let inv = build(&charges, vec![], &terms, now_ms).expect("invoice builds");
    tally_invoicer::store::write(db, std::slice::from_ref(&inv))
        .await
        .expect("invoice stored");
    inv
}

/// A finalized invoice for the 30-day period that started 90 days ago, stored now.
pub async fn past_invoice(
    db: &clickhouse::Client,
    customer: &str,
    currency: &str,
    lines: &[(&str, i64, i64)],
) -> Invoice {
    let now = chrono::Utc::now().timestamp_millis();
    invoice(db, customer, currency, days_ago_ms(90), lines, now).await
}

/// A running payments server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the payments HTTP server on a free loopback port, with the clock `now_ms`.
pub async fn start(db: clickhouse::Client, now_ms: fn() -> i64) -> Server {
    start_with_live(db, now_ms, None).await
}

/// As [`start`], the portal asking `live` for live spend.
pub async fn start_with_live(
    db: clickhouse::Client,
    now_ms: fn() -> i64,
    live: Option<tally_payments::portal::live::LiveSpend>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admin = token(&db, OPERATOR, Role::Admin).await;
    TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr, admin);
    let auth = Arc::new(Authenticator::new("payments", db.clone()));
    auth.reload().await.expect("tokens load");
    let state = Arc::new(AppState {
        settler: Settler::new(db),
        stripe: Stripe::new(WEBHOOK_SECRET, 300),
        auth,
        portal_secret: Some(Secret::new(PORTAL_SECRET)),
        portal: PortalConfig {
            signing_secret: SecretString::new(PORTAL_SECRET),
            base_url: format!("http://{addr}"),
            ..PortalConfig::default()
        },
        portal_live: live,
        now_ms,
    });
    let shutdown = Shutdown::new();
    tokio::spawn(serve(listener, state.clone(), shutdown.clone()));
    Server {
        addr,
        state,
        shutdown,
    }
}

/// Sends SIGTERM to `child` and waits (at most 20 s) for it to exit; its status and stderr.
pub async fn sigterm(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    if let Some(e) = child.stderr.as_mut() {
        std::io::Read::read_to_string(e, &mut stderr).unwrap();
    }
    (status, stderr)
}

/// Sends one request; returns the status and the body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let sent = body.clone();
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let json_answer = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    if json_answer {
        fits_the_document(method, path, &sent, status.as_u16(), &bytes);
    }
    (status, bytes.to_vec())
}

/// Every JSON exchange with a route the OpenAPI document describes must fit it: the answer
/// what its status describes, a JSON request the service accepted its request body.
fn fits_the_document(method: &str, path: &str, sent: &[u8], status: u16, answer: &[u8]) {
    let doc: serde_json::Value =
        serde_json::from_str(tally_payments::http::routes::OPENAPI).expect("JSON");
    let sent: Option<serde_json::Value> = serde_json::from_slice(sent).ok();
    let answer = serde_json::from_slice(answer).unwrap_or(serde_json::Value::Null);
    let fits =
        tally_platform::openapi::check_exchange(&doc, method, path, sent.as_ref(), status, &answer);
    if let Err(e) = fits {
        panic!("the answer does not fit the OpenAPI document: {e}");
    }
}

/// Sends a JSON body to the API as the server's `admin` ([`OPERATOR`]).
pub async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let admin = TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&addr)
        .cloned()
        .unwrap_or_default();
    api_as(addr, Some(&admin), method, path, body).await
}

/// Sends a JSON body to the API with `token` (none: no `Authorization`).
pub async fn api_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let headers: Vec<(&str, String)> = token
        .map(|t| ("authorization", format!("Bearer {t}")))
        .into_iter()
        .collect();
    let (status, bytes) = request(
        addr,
        method,
        path,
        &headers,
        if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
    )
    .await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// A Stripe event body.
pub fn stripe_event(id: &str, kind: &str, object: serde_json::Value, created: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id, "object": "event", "api_version": "2024-06-20", "type": kind,
        "created": created, "livemode": false, "data": {"object": object}
    }))
    .expect("json")
}

/// A PaymentIntent object for `invoice_id`.
pub fn payment_intent(
    pi: &str,
    invoice_id: &str,
    amount: i64,
    currency: &str,
) -> serde_json::Value {
    serde_json::json!({
        "id": pi, "object": "payment_intent", "amount": amount, "amount_received": amount,
        "currency": currency.to_ascii_lowercase(), "status": "succeeded",
        "metadata": {"invoice_id": invoice_id},
        "last_payment_error": {"code": "card_declined", "message": "Your card was declined.",
            "payment_method": {"id": "pm_card_visa", "object": "payment_method"}}
    })
}

/// Posts `body` to the webhook endpoint signed at `t` with `secret`.
pub async fn post_webhook(
    addr: SocketAddr,
    body: &[u8],
    secret: &str,
    t: i64,
) -> (StatusCode, serde_json::Value) {
    let header = signature::header(&Secret::new(secret), t, body);
    post_webhook_raw(addr, body, Some(header)).await
}

pub async fn post_webhook_raw(
    addr: SocketAddr,
    body: &[u8],
    header: Option<String>,
) -> (StatusCode, serde_json::Value) {
    let headers: Vec<(&str, String)> = header
        .map(|h| ("stripe-signature", h))
        .into_iter()
        .collect();
    let (status, bytes) = request(addr, "POST", "/webhooks/stripe", &headers, body.to_vec()).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// What the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub signature: String,
    pub notification_id: String,
    pub authorization: String,
    pub idempotency_key: String,
    pub body: Vec<u8>,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl Received {
    /// What a receiver records of `req`.
    pub async fn read(req: Request<hyper::body::Incoming>) -> Received {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (signature, notification_id) =
            (header("tally-signature"), header("tally-notification-id"));
        let (authorization, idempotency_key) = (header("authorization"), header("idempotency-key"));
        let at = std::time::Instant::now();
        let path = req.uri().path().to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default();
        Received {
            path,
            signature,
            notification_id,
            authorization,
            idempotency_key,
            body,
            at,
        }
    }

    /// Whether its `Tally-Signature` verifies with `secret` (at the header's own time).
    pub fn verifies(&self, secret: &Secret) -> bool {
        let t: i64 = self
            .signature
            .split(',')
            .next()
            .and_then(|p| p.strip_prefix("t="))
            .and_then(|t| t.parse().ok())
            .expect("t=");
        signature::verify(secret, Some(&self.signature), &self.body, t, 300).is_ok()
    }
}

/// Stripe's answer to the last request when it created a PaymentIntent (`POST
/// /v1/payment_intents`): like Stripe, requests with the same `Idempotency-Key` get the same
/// PaymentIntent, so its id is numbered by the distinct keys seen.
fn payment_intent_created(got: &[Received]) -> Option<Bytes> {
    let last = got.last().filter(|r| r.path == "/v1/payment_intents")?;
    let mut keys: Vec<&str> = Vec::new();
    for r in got.iter().filter(|r| r.path == "/v1/payment_intents") {
        if !keys.contains(&r.idempotency_key.as_str()) {
            keys.push(&r.idempotency_key);
        }
    }
    let n = keys.iter().position(|k| *k == last.idempotency_key)? + 1;
    let body = serde_json::json!({"id": format!("pi_standin_{n}"), "object": "payment_intent"});
    Some(Bytes::from(body.to_string()))
}

/// Distinct PaymentIntents a stand-in created (distinct idempotency keys of creations).
pub fn payment_intents_created(got: &[Received]) -> Vec<Received> {
    let mut out: Vec<Received> = Vec::new();
    for r in got.iter().filter(|r| r.path == "/v1/payment_intents") {
        if !out.iter().any(|o| o.idempotency_key == r.idempotency_key) {
            out.push(r.clone());
        }
    }
    out
}

/// A local HTTP receiver for notifications (and Stripe's API stand-in: a creation of a
/// PaymentIntent is answered with its id, the same id for a repeated idempotency key): answers 500 to the first `fail_first` requests,
/// then 200; records every request.
pub async fn receiver(fail_first: usize) -> (SocketAddr, Arc<Mutex<Vec<Received>>>, Shutdown) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let shutdown = Shutdown::new();
    let (g, stop) = (got.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
            };
            let g = g.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let received = Received::read(req).await;
                            let n = {
                                let mut v = g.lock().expect("lock");
                                v.push(received);
                                v.len()
                            };
                            let status = if n <= fail_first { 500 } else { 200 };
                            let body = payment_intent_created(&g.lock().expect("lock"))
                                .unwrap_or_else(|| Bytes::from_static(b"ok"));
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(body))
                                    .expect("response"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, got, shutdown)
}
