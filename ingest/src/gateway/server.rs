//! The gateway's two routers on the shared server (`tally_platform::http::serve_router`:
//! at most `connections_max` connections at once and `connections_per_peer_max` from one
//! address, keep-alive, the header timeout; graceful shutdown: stop accepting, let in-flight
//! requests finish (their events are published and acked), then return), bounded body reads
//! within `body_timeout_ms`, and turning every outcome into a JSON response.
//!
//! Two listeners: the public one (`ingest.listen_addr`: `/v1/events`, `/v1/traces`,
//! `/v1/authorize`, `/v1/balance`, `/healthz`, `/v1/openapi.json`) and, when
//! `ingest.admin_addr` is set, the admin one (`/v1/admin/keys`, `/healthz`,
//! `/v1/openapi.json` only), so the key management is never reachable where agents are. Each
//! listener's axum router is built from its table ([`PUBLIC_ROUTES`], [`admin::ROUTES`]), which
//! tests check against its OpenAPI document both ways. It owns no validation and no auth rules:
//! [`super::events`] and [`super::admin`] do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::extract::State;
use axum::middleware::{self, Next};
use axum::routing::{on, MethodFilter, MethodRouter};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use tally_platform::auth::Authenticator;
pub use tally_platform::http::json;
use tally_platform::http::{route_table, serve_router, ListenerLimits, Router};
use tally_platform::openapi::Route;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::auth::KeyRing;
use super::config::IngestConfig;
use super::decode::Limits;
use super::error::RequestError;
use super::rate_limit::RateLimiter;
use super::response::ErrorBody;
use super::{admin, events, key_store, metrics};

/// Everything a request handler needs, shared by all connections.
pub struct Gateway {
    pub cfg: IngestConfig,
    pub limits: Limits,
    pub js: jetstream::Context,
    pub subject_prefix: String,
    /// Where API keys live; `None` runs without a store (tests that preload keys).
    pub db: Option<clickhouse::Client>,
    pub keys: Arc<KeyRing>,
    /// Who may call the admin API: the API tokens of every Tally API (role `key_admin`), from
    /// the same store as the keys.
    pub auth: Arc<Authenticator>,
    pub limiter: RateLimiter,
    /// Replaces customer and agent ids before publishing, when configured.
    pub pseudonyms: Option<crate::pseudonym::Pseudonymizer>,
    /// When an unknown key id last triggered a reload: at most one such reload per
    /// [`MISS_RELOAD_INTERVAL`], so random key ids cannot hammer ClickHouse.
    last_miss_reload: tokio::sync::Mutex<Option<Instant>>,
}

/// Shortest time between two reloads triggered by unknown key ids.
pub const MISS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

impl Gateway {
    pub fn new(
        cfg: IngestConfig,
        js: jetstream::Context,
        subject_prefix: &str,
        db: Option<clickhouse::Client>,
    ) -> Self {
        let limits = Limits {
            body_max_bytes: cfg.body_max_bytes,
            event_max_bytes: cfg.event_max_bytes,
            batch_max_events: cfg.batch_max_events,
            depth_max: cfg.depth_max,
            string_max_bytes: cfg.string_max_bytes,
        };
        let limiter = RateLimiter::new(cfg.rate_per_key_per_sec, cfg.burst_per_key);
        let auth = Arc::new(match &db {
            Some(db) => Authenticator::new("gateway", db.clone()),
            None => Authenticator::with_records("gateway", Vec::new()),
        });
        Gateway {
            cfg,
            limits,
            js,
            subject_prefix: subject_prefix.to_owned(),
            db,
            keys: Arc::new(KeyRing::default()),
            auth,
            limiter,
            pseudonyms: None,
            last_miss_reload: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes under keyed-hash pseudonyms of customer and agent ids.
    pub fn with_pseudonyms(mut self, p: crate::pseudonym::Pseudonymizer) -> Self {
        self.pseudonyms = Some(p);
        self
    }

    /// Authenticates `authorization`; a well-formed key whose id is not in the ring (created
    /// by the CLI or another instance since the last refresh) triggers one reload first.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<(String, super::auth::Scope), RequestError> {
        let first = self.keys.authenticate(authorization);
        let unknown_id = match (
            &first,
            authorization.and_then(|h| h.strip_prefix("Bearer ")),
        ) {
            (Err(RequestError::InvalidKey), Some(raw)) => super::auth::Token::parse(raw.trim())
                .ok()
                .filter(|t| !self.keys.contains(t.key_id))
                .is_some(),
            _ => false,
        };
        if !unknown_id || self.db.is_none() {
            return first;
        }
        {
            let mut last = self.last_miss_reload.lock().await;
            if last.is_some_and(|t| t.elapsed() < MISS_RELOAD_INTERVAL) {
                return first;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = load_keys(self).await {
            tracing::warn!(error = %e, "reloading API keys for an unknown key id failed");
            return first;
        }
        self.keys.authenticate(authorization)
    }
}

/// A request as the handlers receive it.
pub type HttpRequest = axum::extract::Request;

/// The headers handlers read, copied out of the request.
#[derive(Debug, Default)]
pub struct RequestParts {
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
}

/// A running gateway, for binaries and tests.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin API's address, when `ingest.admin_addr` is set.
    pub admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, waits for in-flight requests, returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Which listener a request came in on: what it may route to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Public,
    Admin,
}

/// Binds `addr` (and `ingest.admin_addr` when set) and serves until `shutdown` is cancelled;
/// reloads keys and API tokens from the store every `key_refresh_secs` when there is one.
pub async fn start(
    gw: Arc<Gateway>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<Running> {
    let admin = gw
        .cfg
        .admin()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let admin_listener = match admin {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    metrics::init();
    if gw.db.is_some() {
        tokio::spawn(refresh_keys(gw.clone(), shutdown.clone()));
    }
    let limits = ListenerLimits {
        connections_max: gw.cfg.connections_max,
        per_peer_max: gw.cfg.connections_per_peer_max,
        header_timeout: Duration::from_millis(gw.cfg.header_timeout_ms),
    };
    let mut tasks = vec![tokio::spawn(serve_router(
        "gateway",
        listener,
        router(gw.clone(), Listener::Public),
        limits,
        shutdown.clone(),
    ))];
    let mut admin_addr = None;
    if let Some(l) = admin_listener {
        admin_addr = Some(l.local_addr()?);
        if let Err(e) = gw.auth.reload().await {
            tracing::warn!(error = %e, "loading API tokens failed; the admin API refuses everyone until a reload");
        }
        let period = Duration::from_secs(gw.cfg.key_refresh_secs);
        gw.auth.refresh_every(period, shutdown.clone());
        tasks.push(tokio::spawn(serve_router(
            "gateway-admin",
            l,
            router(gw, Listener::Admin),
            limits,
            shutdown.clone(),
        )));
        tracing::info!(addr = ?admin_addr, "admin API listening");
    }
    Ok(Running {
        addr,
        admin_addr,
        shutdown,
        tasks,
    })
}

/// Loads the keys once (callers do this before serving so the first request sees them).
pub async fn load_keys(gw: &Gateway) -> Result<usize, key_store::KeyStoreError> {
    let Some(db) = &gw.db else {
        return Ok(gw.keys.len());
    };
    let records = key_store::load(db).await?;
    let n = records.len();
    gw.keys.replace(records);
    metrics::keys_loaded(n);
    Ok(n)
}

async fn refresh_keys(gw: Arc<Gateway>, shutdown: CancellationToken) {
    let period = Duration::from_secs(gw.cfg.key_refresh_secs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if let Err(e) = load_keys(&gw).await {
            tracing::warn!(error = %e, "reloading API keys failed; keeping the previous set");
        }
    }
}

/// What a public route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicOp {
    Health,
    Events,
    /// Served with the `otlp` feature (the default); 404 without it.
    Traces,
    Authorize,
    Balance,
    OpenApi,
}

/// Every route of the public listener: [`route`] answers only these (404/405 otherwise, the
/// admin API included), and a test checks them against [`OPENAPI_PUBLIC`] both ways.
pub const PUBLIC_ROUTES: &[Route<PublicOp>] = &[
    Route::new("GET", "/healthz", PublicOp::Health),
    Route::new("POST", "/v1/events", PublicOp::Events),
    Route::new("POST", "/v1/traces", PublicOp::Traces),
    Route::new("POST", "/v1/authorize", PublicOp::Authorize),
    Route::new("GET", "/v1/balance", PublicOp::Balance),
    Route::new("GET", "/v1/openapi.json", PublicOp::OpenApi),
];

/// The OpenAPI 3.0 document of the public listener, served at its `/v1/openapi.json`.
pub const OPENAPI_PUBLIC: &str = include_str!("openapi_public.json");

/// The router of one listener: its table's routes, 404/405 in the gateway's error shape, and
/// every answer counted by status.
fn router(gw: Arc<Gateway>, which: Listener) -> Router {
    let routes = match which {
        Listener::Public => route_table(PUBLIC_ROUTES, public_handler),
        Listener::Admin => route_table(admin::ROUTES, admin::handler),
    };
    routes
        .fallback(|| async { error_response(&RequestError::NotFound) })
        .method_not_allowed_fallback(|| async { error_response(&RequestError::MethodNotAllowed) })
        .layer(middleware::from_fn(count))
        .with_state(gw)
}

/// Counts every answer of a listener by status, with its latency.
async fn count(req: HttpRequest, next: Next) -> axum::response::Response {
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::request(response.status().as_u16(), started.elapsed());
    response
}

/// An answer or the refusal, as a response.
fn answer(r: Result<Response<Full<Bytes>>, RequestError>) -> Response<Full<Bytes>> {
    r.unwrap_or_else(|e| error_response(&e))
}

/// What a public route's method answers.
fn public_handler(op: PublicOp, method: MethodFilter) -> MethodRouter<Arc<Gateway>> {
    type Gw = State<Arc<Gateway>>;
    match op {
        PublicOp::Health => on(method, || async { health() }),
        PublicOp::Events => on(method, |State(gw): Gw, req: HttpRequest| async move {
            answer(events_route(&gw, req).await)
        }),
        #[cfg(feature = "otlp")]
        PublicOp::Traces => on(method, |State(gw): Gw, req: HttpRequest| async move {
            super::otlp::route(&gw, req).await
        }),
        #[cfg(not(feature = "otlp"))]
        PublicOp::Traces => on(method, || async { error_response(&RequestError::NotFound) }),
        PublicOp::Authorize => on(method, |State(gw): Gw, req: HttpRequest| async move {
            answer(super::spend::authorize(&gw, req).await)
        }),
        PublicOp::Balance => on(method, |State(gw): Gw, req: HttpRequest| async move {
            answer(super::spend::balance(&gw, req).await)
        }),
        PublicOp::OpenApi => on(method, || async { openapi_document(OPENAPI_PUBLIC) }),
    }
}

/// A served OpenAPI document.
pub(crate) fn openapi_document(doc: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(doc.as_bytes())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `{"status": "ok"}`.
pub(crate) fn health() -> Response<Full<Bytes>> {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn events_route(
    gw: &Gateway,
    req: HttpRequest,
) -> Result<Response<Full<Bytes>>, RequestError> {
    let (head, body) = req.into_parts();
    let header = |name| {
        head.headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let parts = RequestParts {
        authorization: header(hyper::header::AUTHORIZATION),
        content_type: header(CONTENT_TYPE),
        content_encoding: header(hyper::header::CONTENT_ENCODING),
    };
    // Authenticate before reading a body a stranger sent.
    gw.authenticate(parts.authorization.as_deref()).await?;
    let body = read_body(gw, &head.headers, body).await?;
    let response = events::handle(gw, &parts, body).await?;
    Ok(json(response.status(), &response))
}

/// Reads at most `body_max_bytes` within `body_timeout_ms`.
pub async fn read_body(
    gw: &Gateway,
    headers: &hyper::HeaderMap,
    body: axum::body::Body,
) -> Result<Bytes, RequestError> {
    let max = gw.limits.body_max_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(RequestError::BodyTooLarge { max });
    }
    let ms = gw.cfg.body_timeout_ms;
    let collected =
        tokio::time::timeout(Duration::from_millis(ms), Limited::new(body, max).collect())
            .await
            .map_err(|_| RequestError::BodyTimeout { ms })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(RequestError::BodyTooLarge { max })
        }
        Err(e) => Err(RequestError::BodyUnreadable {
            detail: e.to_string(),
        }),
    }
}

/// The response of a refused request (counted by its code).
pub(crate) fn error_response(e: &RequestError) -> Response<Full<Bytes>> {
    metrics::refused(e.code());
    let mut r = json(e.status(), &ErrorBody::from(e));
    if let RequestError::RateLimited { retry_after_secs } = e {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    if matches!(
        e,
        RequestError::BodyTooLarge { .. } | RequestError::BodyTimeout { .. }
    ) {
        // The rest of the body was not read: the connection cannot be reused.
        r.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_platform::openapi;

    #[test]
    fn every_public_route_is_described_and_every_description_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_PUBLIC).expect("JSON");
        assert_eq!(
            openapi::check_routes(PUBLIC_ROUTES, &doc),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_admin_api_is_not_routed_on_the_public_listener() {
        let segments = openapi::segments("/v1/admin/keys");
        assert_eq!(
            openapi::find(PUBLIC_ROUTES, "GET", &segments),
            openapi::Found::NotFound
        );
    }
}
