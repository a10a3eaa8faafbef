//! The router behind `telemetry::serve_metrics`: `/metrics`, `/healthz`, `/readyz`, GET (and
//! HEAD) only, one small plain-text response per request, served by the shared server
//! ([`crate::http::serve_router`]: connections bounded in all and per remote address, header
//! timeout). It never blocks on anything but rendering.

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::header::CONTENT_TYPE;
use metrics_exporter_prometheus::PrometheusHandle;

use super::health;
use crate::http::{serve_router, ListenerLimits, Router};
use crate::shutdown::Shutdown;

/// Serves until the runtime stops.
pub(super) async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = handle.render();
                async move {
                    let mut res = text(StatusCode::OK, body);
                    res.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    res
                }
            }),
        )
        .route(
            "/healthz",
            get(|| async { text(StatusCode::OK, "ok\n".into()) }),
        )
        .route("/readyz", get(|| async { readiness() }))
        .fallback(|method: Method| async move {
            if method == Method::GET || method == Method::HEAD {
                text(
                    StatusCode::NOT_FOUND,
                    "not found; try /metrics, /healthz or /readyz\n".into(),
                )
            } else {
                get_only()
            }
        })
        .method_not_allowed_fallback(|| async { get_only() });
    let never = Shutdown::new();
    serve_router(
        "metrics",
        listener,
        router,
        ListenerLimits::default(),
        never,
    )
    .await;
}

fn readiness() -> Response {
    match health::readiness() {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(reasons) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join(", ")),
        ),
    }
}

fn get_only() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into())
}

fn text(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
