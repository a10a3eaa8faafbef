//! The one shutdown path: SIGTERM or Ctrl-C cancels a token that every task watches and
//! marks the service as draining (`/readyz` answers 503).
//! Tasks finish their current unit of work (flush, commit, ack) and return.
//!
//! The handlers are registered before [`on_signals`] returns (not lazily in a spawned task), so
//! a binary that calls it first in `main` turns every later SIGTERM into a clean stop.
//!
//! A periodic task waits on a [`Ticker`]: the interval and the shutdown check written once.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
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

/// When a periodic task runs next, until shutdown: the first [`Ticker::next`] returns at once,
/// each later one after the period (or `false` as soon as shutdown is signalled). The check is
/// made only between passes, so a pass in progress always finishes; the waits are
/// cancellation safe (nothing is lost if shutdown wins the race).
pub struct Ticker {
    interval: Interval,
    shutdown: Shutdown,
    /// Count the period from the end of the last pass rather than from its start.
    pause: bool,
    first: bool,
}

impl Ticker {
    /// A pass every `period`, counted from the start of one pass to the start of the next; a
    /// pass longer than the period delays the next one (never a burst of catch-up passes).
    pub fn new(period: Duration, shutdown: Shutdown) -> Ticker {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker {
            interval,
            shutdown,
            pause: false,
            first: true,
        }
    }

    /// A pass, then a pause of `period` after it ends (a sleep between passes).
    pub fn pausing(period: Duration, shutdown: Shutdown) -> Ticker {
        Ticker {
            pause: true,
            ..Ticker::new(period, shutdown)
        }
    }

    /// Waits until the next pass is due; `false` once shutdown is signalled.
    pub async fn next(&mut self) -> bool {
        self.next_or(std::future::pending::<()>()).await
    }

    /// Waits until the next pass is due or `wake` completes (a pass asked for early); `false`
    /// once shutdown is signalled.
    pub async fn next_or(&mut self, wake: impl Future) -> bool {
        if self.pause && !std::mem::take(&mut self.first) {
            self.interval.reset();
        }
        // biased: a shutdown signalled while a pass ran wins over the tick that fell due meanwhile
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => false,
            _ = wake => true,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod ticker_tests {
    use super::*;
    use tokio::time::Instant;

    const PERIOD: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn the_first_pass_is_at_once_then_one_per_period_from_start_to_start() {
        let mut ticker = Ticker::new(PERIOD, Shutdown::new());
        let start = Instant::now();
        assert!(ticker.next().await);
        assert_eq!(start.elapsed(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(3)).await; // a pass of 3 s
        assert!(ticker.next().await);
        assert_eq!(start.elapsed(), PERIOD);
        tokio::time::advance(Duration::from_secs(25)).await; // a pass longer than the period
        assert!(ticker.next().await);
        assert_eq!(start.elapsed(), Duration::from_secs(35), "late: at once");
        assert!(ticker.next().await);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(45),
            "no catch-up burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pausing_ticker_waits_a_whole_period_after_each_pass_or_a_wake() {
        let mut ticker = Ticker::pausing(PERIOD, Shutdown::new());
        let start = Instant::now();
        assert!(ticker.next().await);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(ticker.next().await);
        assert_eq!(start.elapsed(), Duration::from_secs(13));
        assert!(
            ticker
                .next_or(tokio::time::sleep(Duration::from_secs(4)))
                .await
        );
        assert_eq!(start.elapsed(), Duration::from_secs(17), "woken early");
        assert!(ticker.next().await);
        assert_eq!(start.elapsed(), Duration::from_secs(27));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_at_once() {
        let shutdown = Shutdown::new();
        let mut ticker = Ticker::new(PERIOD, shutdown.clone());
        assert!(ticker.next().await);
        let start = Instant::now();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.cancel();
        });
        assert!(!ticker.next().await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(!ticker.next().await, "and stays ended");
    }

    /// A pass longer than the period, shutdown signalled during it: the tick that fell due
    /// meanwhile never starts another pass (without `biased`, half of these waits said yes).
    #[tokio::test(start_paused = true)]
    async fn a_shutdown_during_a_long_pass_wins_over_the_due_tick() {
        for _ in 0..64 {
            let shutdown = Shutdown::new();
            let mut ticker = Ticker::new(PERIOD, shutdown.clone());
            assert!(ticker.next().await);
            tokio::time::advance(PERIOD * 3).await;
            shutdown.cancel();
            assert!(!ticker.next().await);
        }
    }
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
