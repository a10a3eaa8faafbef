//! Logs (tracing, to stderr) and the Prometheus `/metrics` endpoint. Installed once by each
//! binary at start; libraries only emit through `tracing` and `metrics`.

use std::net::SocketAddr;

use crate::config::TelemetryConfig;

/// Starts logging: `RUST_LOG`, else the configured filter, else `info`.
pub fn init_logs(cfg: &TelemetryConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| cfg.log.clone())
        .unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Serves Prometheus metrics on `addr` (every path answers with the exposition text).
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))
}
