//! A minimal HTTP/1.1 client for the API tests, and a server on port 0 over a test database.
//! [`start`] creates an `admin` token in the test's database; [`get`], [`post`] and
//! [`request`] send the token of the server they talk to, [`request_as`] any other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tally_platform::auth::{self, Authenticator, Role};
use tally_platform::openapi;
use tally_rater::api::{serve, ApiState};
use tally_rater::store::CatalogSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `admin` token of each server [`start`] started.
static TOKENS: Mutex<BTreeMap<SocketAddr, String>> = Mutex::new(BTreeMap::new());

fn token_of(addr: SocketAddr) -> Option<String> {
    TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&addr)
        .cloned()
}

/// A token of `role` for `actor`, stored in `db`.
pub async fn token(db: &clickhouse::Client, actor: &str, role: Role) -> String {
    auth::store::create(db, actor, role, "test", 0)
        .await
        .expect("token created")
        .0
}

/// GET `path`; (status, JSON body).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    request(addr, "GET", path, "").await
}

/// `method` `path` with a JSON `body`, as the server's admin; (status, JSON body).
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    request_as(addr, token_of(addr).as_deref(), method, path, body).await
}

/// `method` `path` with `body` and `token` (none: no `Authorization`), raw: the whole answer
/// as text, head and body. The body is sent after the head and a failed write of it ignored:
/// the server may answer (and close) before it read an oversized one.
pub async fn exchange(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> String {
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
    let _ = s.write_all(body).await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    String::from_utf8(answer).expect("UTF-8")
}

/// `method` `path` with a JSON `body` and `token` (none: no `Authorization`); (status, JSON
/// body), checked against the OpenAPI document.
pub async fn request_as(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let text = exchange(addr, token, method, path, body.as_bytes()).await;
    let status: u16 = text[9..12].parse().expect("a status");
    let answer = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let answer = serde_json::from_str(answer).unwrap_or(serde_json::Value::Null);
    // every exchange with a described route must fit the OpenAPI document
    let doc: serde_json::Value = serde_json::from_str(tally_rater::api::OPENAPI).expect("JSON");
    let sent = serde_json::from_str(body).ok();
    let fits = openapi::check_exchange(&doc, method, path, sent.as_ref(), status, &answer);
    if let Err(e) = fits {
        panic!("the answer does not fit the OpenAPI document: {e}");
    }
    (status, answer)
}

/// POST `body` as JSON to `path`; (status, JSON body).
pub async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    request(addr, "POST", path, &body.to_string()).await
}

/// The API over `db` on a free port, with default settings and no rates; stop it with the
/// returned shutdown and await the handle.
pub async fn start(
    db: clickhouse::Client,
) -> (
    std::net::SocketAddr,
    tally_platform::shutdown::Shutdown,
    tokio::task::JoinHandle<()>,
) {
    start_at(db, || 0).await
}

/// [`start`] with the API's clock `now_ms` (what appended entries record, what a backfill
/// counts as recent).
pub async fn start_at(
    db: clickhouse::Client,
    now_ms: fn() -> i64,
) -> (
    std::net::SocketAddr,
    tally_platform::shutdown::Shutdown,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    let stop = tally_platform::shutdown::Shutdown::new();
    let admin = token(&db, "test-admin", Role::Admin).await;
    TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr, admin);
    let auth = Arc::new(Authenticator::new("rater", db.clone()));
    auth.reload().await.expect("tokens load");
    let state = Arc::new(ApiState {
        source: CatalogSource {
            rater: tally_rater::RaterConfig::default(),
            features: tally_platform::Features::default(),
        },
        db,
        now_ms,
        auth,
        backfill_horizon_secs: tally_rater::backfill::HORIZON_SECS.unsigned_abs(),
    });
    let server = tokio::spawn(serve(listener, state, stop.clone()));
    (addr, stop, server)
}
