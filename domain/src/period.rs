//! Billing periods: half-open UTC intervals `[start, end)` cut by a billing cycle.
//!
//! A monthly cycle is anchored on a day of the month; an anchor past the end of a shorter
//! month bills on that month's last day (anchor 31 -> Feb 28/29, Apr 30). Periods are computed
//! in UTC here; per-customer time zones come with the invoicer's calendar. Pure arithmetic:
//! the caller passes the instant.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// How a subscription's usage is cut into billing periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BillingCycle {
    /// Monthly, starting at 00:00 UTC on `anchor_day` (1 to 31).
    Monthly { anchor_day: u32 },
}

impl Default for BillingCycle {
    fn default() -> Self {
        BillingCycle::Monthly { anchor_day: 1 }
    }
}

/// One billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Period {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Period {
    pub fn contains(&self, time_ms: i64) -> bool {
        self.start_ms <= time_ms && time_ms < self.end_ms
    }

    /// RFC 3339 text of the start, for display.
    pub fn start_rfc3339(&self) -> String {
        rfc3339(self.start_ms)
    }

    pub fn end_rfc3339(&self) -> String {
        rfc3339(self.end_ms)
    }
}

/// RFC 3339 text of an instant in milliseconds since the epoch (UTC), for messages.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| ms.to_string())
}

impl BillingCycle {
    /// Checks the cycle's parameters.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            BillingCycle::Monthly { anchor_day } if !(1..=31).contains(anchor_day) => {
                Err(format!("anchor_day is {anchor_day}, expected 1 to 31"))
            }
            BillingCycle::Monthly { .. } => Ok(()),
        }
    }

    /// The period that contains `time_ms`.
    pub fn period_containing(&self, time_ms: i64) -> Period {
        let BillingCycle::Monthly { anchor_day } = *self;
        let t = DateTime::<Utc>::from_timestamp_millis(time_ms).unwrap_or_default();
        let (mut y, mut m) = (t.year(), t.month());
        let mut start = anchor_in(y, m, anchor_day);
        if start > time_ms {
            (y, m) = prev_month(y, m);
            start = anchor_in(y, m, anchor_day);
        }
        let (ny, nm) = next_month(y, m);
        Period {
            start_ms: start,
            end_ms: anchor_in(ny, nm, anchor_day),
        }
    }

    /// The period right after `period`.
    pub fn next(&self, period: &Period) -> Period {
        self.period_containing(period.end_ms)
    }
}

fn next_month(y: i32, m: u32) -> (i32, u32) {
    if m == 12 {
        (y + 1, 1)
    } else {
        (y, m + 1)
    }
}

fn prev_month(y: i32, m: u32) -> (i32, u32) {
    if m == 1 {
        (y - 1, 12)
    } else {
        (y, m - 1)
    }
}

fn last_day(y: i32, m: u32) -> u32 {
    let (ny, nm) = next_month(y, m);
    let first_next = NaiveDate::from_ymd_opt(ny, nm, 1).expect("first of month exists");
    first_next.pred_opt().expect("month has a last day").day()
}

/// Midnight UTC of the anchor day in month `m` of year `y`, clamped to the month's last day.
fn anchor_in(y: i32, m: u32, anchor_day: u32) -> i64 {
    let d = anchor_day.min(last_day(y, m));
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
        .single()
        .expect("UTC midnight exists")
        .timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn calendar_months_by_default() {
        let p = BillingCycle::default().period_containing(ms("2026-11-26T21:00:00Z"));
        assert_eq!(p.start_ms, ms("2026-11-01T00:00:00Z"));
        assert_eq!(p.end_ms, ms("2026-12-01T00:00:00Z"));
    }

    #[test]
    fn anchor_31_bills_on_last_day_of_short_months() {
        let c = BillingCycle::Monthly { anchor_day: 31 };
        let p = c.period_containing(ms("2027-02-15T00:00:00Z"));
        assert_eq!(p.start_ms, ms("2027-01-31T00:00:00Z"));
        assert_eq!(p.end_ms, ms("2027-02-28T00:00:00Z"));
        let q = c.next(&p);
        assert_eq!(q.start_ms, ms("2027-02-28T00:00:00Z"));
        assert_eq!(q.end_ms, ms("2027-03-31T00:00:00Z"));
    }

    #[test]
    fn period_start_is_inclusive_end_exclusive() {
        let c = BillingCycle::Monthly { anchor_day: 15 };
        let p = c.period_containing(ms("2026-03-15T00:00:00Z"));
        assert_eq!(p.start_ms, ms("2026-03-15T00:00:00Z"));
        let before = c.period_containing(ms("2026-03-14T23:59:59.999Z"));
        assert_eq!(before.end_ms, p.start_ms);
    }

    proptest! {
        #[test]
        fn periods_tile_time(t in 0i64..4_000_000_000_000, anchor in 1u32..=31) {
            let c = BillingCycle::Monthly { anchor_day: anchor };
            let p = c.period_containing(t);
            prop_assert!(p.contains(t));
            prop_assert_eq!(c.next(&p).start_ms, p.end_ms);
            prop_assert_eq!(c.period_containing(p.end_ms - 1), p);
        }
    }
}
