//! The one HTTP/1 server of every Tally listener (the APIs, the gateway's two listeners, the
//! metrics and health listener), on the ecosystem's layer: an axum [`Router`] built from the
//! API's route table ([`route_table`], [`with_fallbacks`]) run as a tower service through hyper's
//! HTTP/1 connection, with tower-http's path normalization (`/v1/x/` is `/v1/x`) and request
//! tracing. The accept loop is ours because it enforces what axum's does not: connections
//! bounded in all and per remote address ([`crate::peers`]), a header timeout, and a graceful
//! shutdown that waits for the requests in flight.
//!
//! Bodies are read by the shared extractors ([`RawBody`], [`Json`]) through [`read_body`]: at
//! most the route's limit ([`BodyLimit`], 413 `body_too_large`) and within [`BODY_TIMEOUT`] in
//! all (408 `request_timeout`); tower-http's body timeout restarts at each
//! frame, so a body trickled a byte at a time would never meet it. Errors are
//! `{"code", "detail"}` ([`error`]). It knows no routes and no business; it never buffers a
//! request body past its limit, nor waits for one longer than [`BODY_TIMEOUT`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequest;
use axum::routing::{MethodFilter, MethodRouter};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower_http::normalize_path::NormalizePath;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use axum::Router;

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
/// The body limit of the extractors on a router that sets no [`BodyLimit`].
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// The connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub connections_max: usize,
    /// Connections served at once from one address (an IPv6 /64); more are closed at once.
    pub per_peer_max: usize,
    /// A client that has not sent its request headers by then is dropped.
    pub header_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            connections_max: CONNECTIONS_MAX,
            per_peer_max: PER_PEER_MAX,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` (named `name` in logs) within `limits` until `shutdown`;
/// then stops accepting and returns once the requests in flight are answered.
pub async fn serve_router(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    shutdown: Shutdown,
) {
    serve_service(name, listener, router, limits, shutdown).await;
}

/// The accept loop behind every listener.
async fn serve_service<S, B>(
    name: &'static str,
    listener: TcpListener,
    service: S,
    limits: ListenerLimits,
    shutdown: Shutdown,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    // 5xx answers are the handlers' to log (they know why); the trace layer's spans and
    // events stay at debug
    let service = tower::ServiceBuilder::new()
        .layer(
            TraceLayer::new_for_http()
                // the method only, never the URI: a portal path carries a customer's link token
                .make_span_with(|req: &hyper::Request<_>| {
                    tracing::debug_span!("request", method = %req.method())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .service(NormalizePath::trim_trailing_slash(service));
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let peers = PeerLimit::new(limits.per_peer_max);
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = listener.accept() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(peer_slot) = peers.admit(peer.ip()) else {
            tracing::debug!(listener = name, %peer, limit = limits.per_peer_max, "connection refused: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _peer_slot = peer_slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(listener = name, error = %e, "connection ended with an error");
                },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// A router serving exactly the routes of `table` (the table an API's OpenAPI document is
/// checked against, `crate::openapi::check_routes`), so the two cannot drift:
/// `handler(op, method)` answers the route's method on its path (`on(method, handler)`).
/// Routes sharing a path share its method router.
///
/// # Panics
/// On a route the table cannot serve (an unknown method, a pattern axum refuses): the tables
/// are constants, and every API's tests build its router.
pub fn route_table<T: Copy, S: Clone + Send + Sync + 'static>(
    table: &[crate::openapi::Route<T>],
    handler: impl Fn(T, MethodFilter) -> MethodRouter<S>,
) -> Router<S> {
    let mut router = Router::new();
    for r in table {
        let filter = Method::from_bytes(r.method.as_bytes())
            .ok()
            .and_then(|m| MethodFilter::try_from(m).ok())
            .unwrap_or_else(|| panic!("route {} {}: unknown method", r.method, r.path));
        let route = handler(r.op, filter).route_layer(axum::middleware::from_fn(named_params));
        router = router.route(r.path, route);
    }
    router
}

/// Lets a routed request through only when every path parameter names something: an empty
/// one (`/v1/customers//agents`) or one that is not UTF-8 once percent-decoded (`%FF`) is
/// answered 404 `not_found` as an unknown path is, in the shared shape (axum would pass the
/// empty one to the handler and answer the other in plain text). A route layer, so it runs
/// after any guard around the router: the token is still checked first.
async fn named_params(
    params: Result<axum::extract::RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match params {
        Ok(p) if p.iter().all(|(_, value)| !value.is_empty()) => next.run(req).await,
        _ => no_route(req.method(), req.uri()).into_response(),
    }
}

/// 404 `not_found` for `method` on `uri`: no route serves it.
fn no_route(method: &Method, uri: &Uri) -> Response<Body> {
    fail(
        ErrorCode::NotFound,
        format!(
            "{method} {}: no such route; see /v1/openapi.json",
            uri.path()
        ),
    )
}

/// `router` answering unrouted requests in the shared `{code, detail}` shape: 404
/// `not_found` for an unknown path, 405 `method_not_allowed` for a known one with another
/// method (the answers `crate::openapi::resolve` gives). Call it after the last route.
pub fn with_fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(|method: Method, uri: Uri| async move { no_route(&method, &uri) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            fail(
                ErrorCode::MethodNotAllowed,
                format!("{method} {}", uri.path()),
            )
        })
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

/// The public error codes every service shares, each with its one HTTP status: the one list
/// of what a code means across the product (docs/ERRORS.md lists them, and a test keeps the
/// page and this enum equal). A service's own codes (a rejected field, a lifecycle conflict)
/// stay with the service; a code here is never spelled with another status or meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 404: no such route, or no such resource.
    NotFound,
    /// 405: the path is served, not with this method.
    MethodNotAllowed,
    /// 413: the request body is over the route's limit.
    BodyTooLarge,
    /// 408: the request body was not received within the body timeout.
    RequestTimeout,
    /// 400: the request body could not be read (the connection failed mid-body).
    BodyUnreadable,
    /// 400: the request body is not the JSON the route takes (the field is named).
    InvalidBody,
    /// 503: a store, broker or decider the answer needs is unavailable; retry.
    Unavailable,
    /// 503: a change could not be recorded in the audit, so it was not made; retry.
    AuditUnavailable,
    /// 500: a fault of the service; the detail is in its log, never in the answer.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order docs/ERRORS.md lists them.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::BodyTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::BodyUnreadable,
        ErrorCode::InvalidBody,
        ErrorCode::Unavailable,
        ErrorCode::AuditUnavailable,
        ErrorCode::Internal,
    ];

    /// The code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::BodyUnreadable => "body_unreadable",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Its HTTP status.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BodyUnreadable | ErrorCode::InvalidBody => StatusCode::BAD_REQUEST,
            ErrorCode::Unavailable | ErrorCode::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// `code` as `{"code": ..., "detail": ...}` with its status.
pub fn fail(code: ErrorCode, detail: impl ToString) -> Response<Body> {
    error(code.status(), code.as_str(), detail)
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
pub async fn read_body<B>(body: B, max_bytes: usize) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
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
            fail(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body was not received within {} s",
                    within.as_secs_f64()
                ),
            )
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(fail(
            ErrorCode::BodyTooLarge,
            format!("request body: {e} (limit {max_bytes} bytes)"),
        )),
        Err(e) => Err(fail(
            ErrorCode::BodyUnreadable,
            format!("reading the request body: {e}"),
        )),
    }
}

/// `body` as JSON of type `T`; 400 `invalid_body` naming the field otherwise.
// one answer per request, never stored: boxing it would only cost an allocation
#[allow(clippy::result_large_err)]
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response<Body>> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        fail(
            ErrorCode::InvalidBody,
            format!("field {}: {}", e.path(), e.inner()),
        )
    })
}

/// The body limit of the extractors ([`RawBody`], [`Json`]) on a router:
/// `router.layer(axum::Extension(BodyLimit(n)))`; [`BODY_BYTES_MAX`] without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

fn body_limit(req: &axum::extract::Request) -> usize {
    req.extensions()
        .get::<BodyLimit>()
        .map_or(BODY_BYTES_MAX, |l| l.0)
}

/// The raw request body (for signatures over the exact bytes), read as [`read_body`] reads it
/// within the router's [`BodyLimit`].
#[derive(Debug, Clone)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Response<Body>;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        let max = body_limit(&req);
        read_body(req.into_body(), max).await.map(RawBody)
    }
}

/// The request body as JSON of type `T`, read as [`read_body`] reads it within the router's
/// [`BodyLimit`] and parsed by [`parse_json`]; 400 `invalid_body` naming the field otherwise.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Response<Body>;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        let max = body_limit(&req);
        let body = read_body(req.into_body(), max).await?;
        parse_json(&body).map(Json)
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::Path;
    use tower::ServiceExt;

    use super::*;
    use crate::openapi::Route;

    /// `GET uri` on a router serving `/v1/things/{id}/parts`, echoing `id`: (status, body).
    async fn get(uri: &str) -> (StatusCode, String) {
        let table = [Route::new("GET", "/v1/things/{id}/parts", ())];
        let router: Router = with_fallbacks(route_table(&table, |(), method| {
            axum::routing::on(method, |Path(id): Path<String>| async move { id })
        }));
        let req = Request::get(uri)
            .body(axum::body::Body::empty())
            .expect("a request");
        let res = router.oneshot(req).await.expect("infallible");
        let status = res.status();
        let body = res.into_body().collect().await.expect("a body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_path_parameter_that_names_nothing_is_an_unknown_path() {
        assert_eq!(
            get("/v1/things/acme/parts").await,
            (StatusCode::OK, "acme".into())
        );
        // percent-decoded before the handler sees it
        assert_eq!(
            get("/v1/things/%61cme/parts").await,
            (StatusCode::OK, "acme".into())
        );
        // empty, or not UTF-8 once decoded: the 404 of an unknown path, in the shared shape
        for uri in ["/v1/things//parts", "/v1/things/%FF/parts"] {
            let detail = format!("GET {uri}: no such route; see /v1/openapi.json");
            let expected = serde_json::json!({"code": "not_found", "detail": detail});
            let (status, body) = get(uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(body, expected, "{uri}");
        }
    }
}
