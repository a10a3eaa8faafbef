//! Tumbling windows: fixed-size, aligned to the Unix epoch, half-open `[start, end)`.
//!
//! Pure arithmetic on millisecond timestamps; `rem_euclid` keeps times before 1970 correct.

use serde::{Deserialize, Serialize};

/// One tumbling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: i64,
    pub size_ms: i64,
}

impl Window {
    /// The window of `size_secs` seconds that contains `time_ms`.
    pub fn containing(time_ms: i64, size_secs: u32) -> Window {
        debug_assert!(size_secs > 0, "window size must be positive");
        let size_ms = i64::from(size_secs) * 1000;
        Window {
            start_ms: time_ms - time_ms.rem_euclid(size_ms),
            size_ms,
        }
    }

    /// The first millisecond after the window.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.size_ms
    }

    pub fn contains(&self, time_ms: i64) -> bool {
        self.start_ms <= time_ms && time_ms < self.end_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn boundaries_belong_to_the_next_window() {
        let w = Window::containing(60_000, 60);
        assert_eq!(w.start_ms, 60_000);
        assert_eq!(Window::containing(59_999, 60).start_ms, 0);
        assert!(!w.contains(120_000));
    }

    #[test]
    fn negative_times_round_down() {
        assert_eq!(Window::containing(-1, 60).start_ms, -60_000);
    }

    proptest! {
        #[test]
        fn every_time_is_in_exactly_its_window(t in -10_000_000_000_000i64..10_000_000_000_000, size in 1u32..100_000) {
            let w = Window::containing(t, size);
            prop_assert!(w.contains(t));
            prop_assert_eq!(w.start_ms.rem_euclid(i64::from(size) * 1000), 0);
            prop_assert_eq!(Window::containing(w.start_ms, size), w);
            prop_assert_eq!(Window::containing(w.end_ms(), size).start_ms, w.end_ms());
        }
    }
}
