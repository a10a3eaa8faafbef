//! Crash points for the fault tests: named places in the flush where the process can be made
//! to die with `abort()` (as abrupt as `kill -9`: no destructor, no flush, no ack), so a test
//! can crash the real binary exactly between two steps of a commit instead of at a random
//! moment.
//!
//! A point fires only when the environment variable `ENV` names it; the variable is read once.
//! Nothing else in the aggregator may depend on it. The points exist only in a build with the
//! crate's `testkit` feature, which only the aggregator's own tests enable (so the binary
//! they run, `CARGO_BIN_EXE_tally-aggregator`, has them, and logs an error at start when the
//! variable is set); without it [`point`] and [`arm_from_env`] do nothing and a release binary
//! never reads the variable.

#[cfg(feature = "testkit")]
use std::sync::OnceLock;

/// The environment variable that arms one crash point, e.g. `after_rows`.
#[cfg(feature = "testkit")]
pub const ENV: &str = "TALLY_AGGREGATOR_CRASH_AT";

/// The steps of a flush a test can crash between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Dead-letter records published, nothing committed yet.
    AfterDeadLetters,
    /// Events and readings inserted, the commit marker not yet written.
    AfterRows,
    /// The marker is durable, no message acknowledged yet.
    AfterMarker,
    /// Half of the batch's messages acknowledged.
    MidAck,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 4] = [
        CrashPoint::AfterDeadLetters,
        CrashPoint::AfterRows,
        CrashPoint::AfterMarker,
        CrashPoint::MidAck,
    ];

    /// The name [`ENV`] takes.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterDeadLetters => "after_dead_letters",
            CrashPoint::AfterRows => "after_rows",
            CrashPoint::AfterMarker => "after_marker",
            CrashPoint::MidAck => "mid_ack",
        }
    }

    /// The point named `name`, if any.
    pub fn parse(name: &str) -> Option<CrashPoint> {
        CrashPoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

#[cfg(feature = "testkit")]
fn armed() -> Option<CrashPoint> {
    static ARMED: OnceLock<Option<CrashPoint>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let value = std::env::var(ENV).ok()?;
        let point = CrashPoint::parse(&value);
        match point {
            Some(p) => tracing::error!(
                point = p.name(),
                "{ENV} is set: this process will abort there (a test hook, never for production)"
            ),
            None => tracing::error!(value = %value, "{ENV} names no crash point; ignored"),
        }
        point
    })
}

/// Reads `ENV` now (so its warning is logged at start rather than at the first flush).
#[cfg(feature = "testkit")]
pub fn arm_from_env() {
    let _ = armed();
}

/// Nothing: a build without the `testkit` feature has no crash point.
#[cfg(not(feature = "testkit"))]
pub fn arm_from_env() {}

/// Aborts the process if `ENV` names `point`.
#[cfg(feature = "testkit")]
pub fn point(point: CrashPoint) {
    if armed() == Some(point) {
        tracing::error!(point = point.name(), "crash point reached: aborting");
        std::process::abort();
    }
}

/// Nothing: a build without the `testkit` feature has no crash point.
#[cfg(not(feature = "testkit"))]
pub fn point(_point: CrashPoint) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in CrashPoint::ALL {
            assert_eq!(CrashPoint::parse(p.name()), Some(p));
        }
        assert_eq!(CrashPoint::parse("after_everything"), None);
    }
}
