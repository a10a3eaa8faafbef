//! Serving: the shared `tally_platform::http` server (bounded connections, header timeout,
//! graceful shutdown) with this service's router, plus the response helpers the routes use
//! beyond the shared ones (raw bodies for signature checks, portal HTML with a strict policy).
//! It never buffers a request body past `BODY_BYTES_MAX`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
pub use tally_platform::http::{bytes as with_type, error, fail, json, Body};
use tally_platform::shutdown::Shutdown;
use tokio::net::TcpListener;

use super::routes::{route, AppState};

/// Largest request body (a webhook event or an API call).
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// Serves until `shutdown`; connections in flight finish gracefully.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: Shutdown) {
    let handler = move |req| {
        let state = state.clone();
        async move { route(&state, req).await }
    };
    tally_platform::http::serve(listener, handler, shutdown).await;
}

/// Reads the raw body (webhook signatures cover the exact bytes), refusing more than
/// [`BODY_BYTES_MAX`] (413) or a body not received within the shared server's body timeout
/// (408).
pub async fn body(b: Incoming) -> Result<Bytes, Response<Body>> {
    tally_platform::http::read_body(b, BODY_BYTES_MAX).await
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
