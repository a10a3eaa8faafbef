//! A minimal HTTP/1.1 client for the API tests, and a server on port 0 over a test database.

use std::sync::Arc;

use tally_rater::api::{serve, ApiState};
use tally_rater::catalog_store::CatalogSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path`; (status, JSON body).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    request(addr, "GET", path, "").await
}

/// `method` `path` with a JSON `body`; (status, JSON body).
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("writes");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("reads");
    let status: u16 = text[9..12].parse().expect("a status");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    let stop = tally_platform::shutdown::Shutdown::new();
    let state = Arc::new(ApiState {
        source: CatalogSource {
            rater: tally_rater::RaterConfig::default(),
            features: tally_platform::Features::default(),
        },
        db,
        now_ms: || 0,
    });
    let server = tokio::spawn(serve(listener, state, stop.clone()));
    (addr, stop, server)
}
