//! Logs (tracing, to stderr), the Prometheus exporter and the health endpoints. Installed once
//! by each binary at start; libraries only emit through `tracing` and `metrics`.
//!
//! [`serve_metrics`] answers on the service's metrics address:
//! - `GET /metrics`: the Prometheus exposition text;
//! - `GET /healthz`: liveness, `200 ok` while the process serves;
//! - `GET /readyz`: readiness, `200 ready`, or `503` naming what is not ready (a component
//!   marked with [`health::set_ready`], or `draining` once SIGTERM or SIGINT arrived).
//!
//! This module never decides what a service does; it only reports what the service says.
//!
//! Layout: `telemetry/health.rs` holds the readiness state, `telemetry/http.rs` the listener.

pub mod health;
mod http;

use std::net::SocketAddr;
use std::time::Duration;

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

/// How often histogram and summary state is compacted between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder and serves `/metrics`, `/healthz` and `/readyz` on `addr`
/// (module docs). Histograms are exported as Prometheus histograms (`_bucket` series), so
/// percentiles aggregate across instances with `histogram_quantile`. Must be called inside a
/// Tokio runtime; the address is bound before this returns, so a taken port fails here.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    use metrics_exporter_prometheus::Matcher;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| anyhow::anyhow!("serve_metrics needs a Tokio runtime"))?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets(SIZE_BUCKETS))
        .map_err(|e| anyhow::anyhow!("metric buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let _guard = runtime.enter();
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    health::drain_on_signals();
    tokio::spawn(http::serve(listener, handle));
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(())
}
