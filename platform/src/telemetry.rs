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

/// Histogram buckets for every `*_seconds` metric: 1 ms to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Histogram buckets for size metrics (messages per batch and the like).
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0, 100000.0,
];

/// Serves Prometheus metrics on `addr` (every path answers with the exposition text).
/// Histograms are exported as Prometheus histograms (`_bucket` series), so percentiles
/// aggregate across instances with `histogram_quantile`.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    use metrics_exporter_prometheus::Matcher;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets(SIZE_BUCKETS))
        .map_err(|e| anyhow::anyhow!("metric buckets: {e}"))?
        .install()
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))
}
