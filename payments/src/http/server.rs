//! Serving: the shared `tally_platform::http` server (bounded connections, header timeout,
//! graceful shutdown) with this service's axum router ([`super::routes::router`]), plus the
//! response helpers the routes use beyond the shared ones (portal HTML with a strict policy).
//! Bodies are read by the shared `RawBody` extractor within [`BODY_BYTES_MAX`], never past it.

use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
pub use tally_platform::http::{bytes as with_type, error, fail, json, Body};
use tally_platform::http::{serve_router, ListenerLimits};
use tally_platform::shutdown::Shutdown;
use tokio::net::TcpListener;

use super::routes::{router, AppState};

/// Largest request body (a webhook event or an API call).
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// Serves until `shutdown`; connections in flight finish gracefully.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: Shutdown) {
    serve_router(
        "payments",
        listener,
        router(state),
        ListenerLimits::default(),
        shutdown,
    )
    .await;
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
