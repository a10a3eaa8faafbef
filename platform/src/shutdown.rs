//! The one shutdown path: SIGTERM or Ctrl-C cancels a token that every task watches and
//! marks the service as draining (`/readyz` answers 503).
//! Tasks finish their current unit of work (flush, commit, ack) and return.
//!
//! The handlers are registered before [`on_signals`] returns (not lazily in a spawned task), so
//! a binary that calls it first in `main` turns every later SIGTERM into a clean stop.

use tokio_util::sync::CancellationToken;

pub use tokio_util::sync::CancellationToken as Shutdown;

/// A token cancelled on SIGTERM or SIGINT. Must be called inside a Tokio runtime; the signal
/// handlers are installed before it returns.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    tracing::info!("shutdown signal received");
                    // /readyz answers 503 from now on, so load balancers stop sending work
                    crate::telemetry::health::set_draining();
                    t.cancel();
                });
            }
            (term, int) => {
                tracing::warn!(
                    term_error = ?term.err(),
                    int_error = ?int.err(),
                    "could not install the signal handlers; falling back to Ctrl-C only"
                );
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    crate::telemetry::health::set_draining();
                    t.cancel();
                });
            }
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        t.cancel();
    });
    token
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Bit of SIGTERM (15) in the `SigCgt` mask of /proc/self/status.
    fn sigterm_caught() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << 14) != 0)
    }

    #[tokio::test]
    async fn the_handler_is_installed_before_returning() {
        let token = on_signals();
        // no await between the call and the check: the spawned task has not run yet
        assert!(
            sigterm_caught(),
            "SIGTERM is caught as soon as on_signals returns"
        );
        assert!(!token.is_cancelled());
    }
}
