//! The HTTP server: accepts connections (at most [`CONNECTIONS_MAX`] at once), serves each
//! with hyper's HTTP/1 until shutdown, and the response helpers the routes share.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tally_platform::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::routes::{route, AppState};

/// Connections served at once; more wait to be accepted.
pub const CONNECTIONS_MAX: usize = 64;
/// Largest request body (a webhook event or an API call).
pub const BODY_BYTES_MAX: usize = 1 << 20;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A response body.
pub type Body = Full<Bytes>;

/// Serves until `shutdown`; connections in flight finish gracefully.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    while let Ok(permit) = slots.clone().acquire_owned().await {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = listener.accept() => s,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "payments accept failed");
                continue;
            }
        };
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "payments connection ended with an error");
            }
        });
    }
}

/// Reads the body, refusing more than [`BODY_BYTES_MAX`].
pub async fn body(b: Incoming) -> Result<Bytes, Response<Body>> {
    Limited::new(b, BODY_BYTES_MAX)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e))
}

pub fn with_type(status: StatusCode, content_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    with_type(
        status,
        "application/json",
        serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// `{"code": ..., "detail": ...}`.
pub fn error(status: StatusCode, code: &str, detail: impl ToString) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"code": code, "detail": detail.to_string()}),
    )
}

/// A portal page: HTML with a policy that forbids every external resource and script.
pub fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut r = with_type(status, "text/html; charset=utf-8", page.into_bytes());
    r.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'",
        ),
    );
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}
