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

/// Starts logging to stderr: `RUST_LOG`, else the configured filter, else `info`. Colours
/// only on a terminal (see [`ansi_colours`]), so logs redirected to a file or collected by a
/// supervisor carry no escape codes.
pub fn init_logs(cfg: &TelemetryConfig) {
    use std::io::IsTerminal;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| cfg.log.clone())
        .unwrap_or_else(|| "info".into());
    let no_color = std::env::var_os("NO_COLOR");
    let ansi = ansi_colours(std::io::stderr().is_terminal(), no_color.as_deref());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Whether log lines get ANSI colour codes: only when stderr is a terminal and `NO_COLOR`
/// (no-color.org) is unset or empty.
pub fn ansi_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
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
    tokio::spawn(http::serve(listener, handle));
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::ansi_colours(true, None));
        assert!(super::ansi_colours(true, Some(OsStr::new(""))));
        assert!(!super::ansi_colours(true, Some(OsStr::new("1"))));
        assert!(!super::ansi_colours(false, None), "a file or a pipe");
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// The one test that installs the global recorder (a process has one).
    #[tokio::test]
    async fn the_metrics_address_serves_metrics_liveness_and_readiness() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        super::serve_metrics(addr).unwrap();
        metrics::counter!("tally_test_things_total").increment(3);

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("tally_test_things_total 3"), "{metrics}");
        assert!(get(addr, "/healthz").await.ends_with("\r\n\r\nok\n"));

        super::health::set_ready("warming-up", false);
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains("not ready: warming-up"), "{not_ready}");
        super::health::set_ready("warming-up", true);
        let ready = get(addr, "/readyz").await;
        assert!(
            ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"),
            "{ready}"
        );

        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        let taken = super::serve_metrics(addr).unwrap_err().to_string();
        assert!(taken.contains("cannot serve metrics"), "{taken}");
    }
}
