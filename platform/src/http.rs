//! A small HTTP/1 API server for the services' JSON APIs: bounded connections (in all and per
//! remote address), a header timeout, a body timeout, graceful shutdown, and the response
//! helpers every API uses (JSON bodies, errors as `{"code", "detail"}`, bounded request
//! bodies). It knows no routes: the service passes a handler. It never buffers a request body
//! past the limit the caller gives, nor waits for one longer than [`BODY_TIMEOUT`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::peers::PeerLimit;
use crate::shutdown::Shutdown;

/// A response body.
pub type Body = Full<Bytes>;

/// Connections served at once; more wait to be accepted.
pub const CONNECTIONS_MAX: usize = 64;
/// Connections served at once from one remote address; more from it are closed at once, so
/// one client cannot hold every slot (a quarter of them).
pub const PER_PEER_MAX: usize = CONNECTIONS_MAX / 4;
/// A client that has not sent its request headers by then is dropped.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body not fully received by then (from when the handler starts reading it) is
/// refused with 408 `request_timeout`.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `handler` on `listener` until `shutdown`; open connections finish their request.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: Shutdown)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let peers = PeerLimit::new(PER_PEER_MAX);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = listener.accept() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(peer_slot) = peers.admit(peer.ip()) else {
            tracing::debug!(%peer, limit = PER_PEER_MAX, "api connection refused: too many from this address");
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _peer_slot = peer_slot;
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, "api connection ended with an error");
                },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// The path's segments (`/v1/invoices/x` → `["v1", "invoices", "x"]`), for matching routes.
pub fn segments(uri: &hyper::Uri) -> Vec<String> {
    uri.path()
        .trim_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

/// A response with `body` and its content type.
pub fn bytes(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes(status, "application/json", body)
}

#[derive(Serialize)]
struct ApiError<'a> {
    code: &'a str,
    detail: String,
}

/// An error as `{"code": ..., "detail": ...}`.
pub fn error(status: StatusCode, code: &str, detail: impl ToString) -> Response<Body> {
    json(
        status,
        &ApiError {
            code,
            detail: detail.to_string(),
        },
    )
}

/// The raw request body, at most `max_bytes`, received within [`BODY_TIMEOUT`]; 413
/// `body_too_large` or 408 `request_timeout` otherwise.
pub async fn read_body(body: Incoming, max_bytes: usize) -> Result<Bytes, Response<Body>> {
    read_body_within(body, max_bytes, BODY_TIMEOUT).await
}

/// [`read_body`] with its own time limit.
pub async fn read_body_within<B>(
    body: B,
    max_bytes: usize,
    within: Duration,
) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let collected = tokio::time::timeout(within, Limited::new(body, max_bytes).collect())
        .await
        .map_err(|_| {
            error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body was not received within {} s",
                    within.as_secs_f64()
                ),
            )
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body: {e} (limit {max_bytes} bytes)"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            format!("reading the request body: {e}"),
        )),
    }
}

/// The request body as JSON of type `T`, at most `max_bytes`, within [`BODY_TIMEOUT`]; a
/// 4xx response naming the problem (and the field, for JSON errors) otherwise.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    max_bytes: usize,
) -> Result<T, Response<Body>> {
    let body = read_body(req.into_body(), max_bytes).await?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("field {}: {}", e.path(), e.inner()),
        )
    })
}
