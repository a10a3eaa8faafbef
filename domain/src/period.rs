//! Billing periods: half-open UTC intervals `[start, end)` cut by a billing cycle.
//!
//! A monthly cycle is anchored on a day of the month; an anchor past the end of a shorter
//! month bills on that month's last day (anchor 31 -> Feb 28/29, Apr 30). A cycle of several
//! months (quarterly: 3, annual: 12) is anchored on a day and a month: its periods start on
//! that day of the anchor month and of every `months`-th month from it. A weekly cycle starts
//! on an ISO weekday (1 Monday to 7 Sunday). Periods are computed in UTC here; a
//! subscription's time zone is applied by the rater (`rater/src/catalog/zone.rs`) on
//! wall-clock time. Pure arithmetic: the caller passes the instant.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// How a subscription's usage is cut into billing periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BillingCycle {
    /// Monthly, starting at 00:00 UTC on `anchor_day` (1 to 31).
    Monthly { anchor_day: u32 },
    /// Every `months` months (1, 2, 3, 4, 6 or 12; 3 is quarterly, 12 annual), starting at
    /// 00:00 UTC on `anchor_day` (1 to 31) of `anchor_month` (1 to 12) and of every
    /// `months`-th month from it.
    Months {
        months: u32,
        anchor_month: u32,
        anchor_day: u32,
    },
    /// Weekly, starting at 00:00 UTC on `anchor_weekday` (1 Monday to 7 Sunday).
    Weekly { anchor_weekday: u32 },
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
        let day = |d: u32| {
            if (1..=31).contains(&d) {
                Ok(())
            } else {
                Err(format!("anchor_day is {d}, expected 1 to 31"))
            }
        };
        match *self {
            BillingCycle::Monthly { anchor_day } => day(anchor_day),
            BillingCycle::Months { months, .. } if ![1, 2, 3, 4, 6, 12].contains(&months) => {
                Err(format!("months is {months}, expected 1, 2, 3, 4, 6 or 12"))
            }
            BillingCycle::Months { anchor_month, .. } if !(1..=12).contains(&anchor_month) => {
                Err(format!("anchor_month is {anchor_month}, expected 1 to 12"))
            }
            BillingCycle::Months { anchor_day, .. } => day(anchor_day),
            BillingCycle::Weekly { anchor_weekday } if !(1..=7).contains(&anchor_weekday) => Err(
                format!("anchor_weekday is {anchor_weekday}, expected 1 (Monday) to 7 (Sunday)"),
            ),
            BillingCycle::Weekly { .. } => Ok(()),
        }
    }

    /// The period that contains `time_ms`.
    pub fn period_containing(&self, time_ms: i64) -> Period {
        match *self {
            BillingCycle::Monthly { anchor_day } => months_containing(time_ms, 1, 1, anchor_day),
            BillingCycle::Months {
                months,
                anchor_month,
                anchor_day,
            } => months_containing(time_ms, months, anchor_month, anchor_day),
            BillingCycle::Weekly { anchor_weekday } => week_containing(time_ms, anchor_weekday),
        }
    }

    /// The period right after `period`.
    pub fn next(&self, period: &Period) -> Period {
        self.period_containing(period.end_ms)
    }

    /// The interval's name: `weekly`, `monthly`, `quarterly`, `annual` or `every N months`.
    pub fn interval(&self) -> String {
        match *self {
            BillingCycle::Weekly { .. } => "weekly".into(),
            BillingCycle::Monthly { .. } | BillingCycle::Months { months: 1, .. } => {
                "monthly".into()
            }
            BillingCycle::Months { months: 3, .. } => "quarterly".into(),
            BillingCycle::Months { months: 12, .. } => "annual".into(),
            BillingCycle::Months { months, .. } => format!("every {months} months"),
        }
    }

    /// The anchor: the day of the month, or of the week (1 Monday) for a weekly cycle.
    pub fn anchor_day(&self) -> u32 {
        match *self {
            BillingCycle::Monthly { anchor_day } | BillingCycle::Months { anchor_day, .. } => {
                anchor_day
            }
            BillingCycle::Weekly { anchor_weekday } => anchor_weekday,
        }
    }
}

const DAY_MS: i64 = 86_400_000;

/// The period of `months` months anchored on `anchor_day` of `anchor_month` containing
/// `time_ms`. Months are counted from year 0 (`year * 12 + month - 1`).
fn months_containing(time_ms: i64, months: u32, anchor_month: u32, anchor_day: u32) -> Period {
    let t = DateTime::<Utc>::from_timestamp_millis(time_ms).unwrap_or_default();
    let index = i64::from(t.year()) * 12 + i64::from(t.month0());
    let step = i64::from(months.max(1));
    let mut first = index - (index - i64::from(anchor_month.max(1) - 1)).rem_euclid(step);
    let start = |i: i64| {
        let year = i32::try_from(i.div_euclid(12)).unwrap_or(1970);
        let month = u32::try_from(i.rem_euclid(12)).unwrap_or(0) + 1;
        anchor_in(year, month, anchor_day)
    };
    if start(first) > time_ms {
        first -= step;
    }
    Period {
        start_ms: start(first),
        end_ms: start(first + step),
    }
}

/// The week starting at 00:00 UTC on `anchor_weekday` (1 Monday) containing `time_ms`.
fn week_containing(time_ms: i64, anchor_weekday: u32) -> Period {
    let day = time_ms.div_euclid(DAY_MS);
    // 1970-01-01 was a Thursday (ISO weekday 4)
    let weekday = (day + 3).rem_euclid(7) + 1;
    let start_day = day - (weekday - i64::from(anchor_weekday)).rem_euclid(7);
    Period {
        start_ms: start_day * DAY_MS,
        end_ms: (start_day + 7) * DAY_MS,
    }
}

fn next_month(y: i32, m: u32) -> (i32, u32) {
    if m == 12 {
        (y + 1, 1)
    } else {
        (y, m + 1)
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

    #[test]
    fn quarters_and_years_start_on_their_anchor_month_and_day() {
        let q = BillingCycle::Months {
            months: 3,
            anchor_month: 2,
            anchor_day: 15,
        };
        // quarters start Feb 15, May 15, Aug 15, Nov 15
        let p = q.period_containing(ms("2027-01-10T00:00:00Z"));
        assert_eq!(p.start_ms, ms("2026-11-15T00:00:00Z"));
        assert_eq!(p.end_ms, ms("2027-02-15T00:00:00Z"));
        let p = q.period_containing(ms("2026-11-14T23:59:59.999Z"));
        assert_eq!(p.start_ms, ms("2026-08-15T00:00:00Z"));
        let year = BillingCycle::Months {
            months: 12,
            anchor_month: 2,
            anchor_day: 29,
        };
        let p = year.period_containing(ms("2027-06-01T00:00:00Z"));
        assert_eq!(p.start_ms, ms("2027-02-28T00:00:00Z"));
        assert_eq!(p.end_ms, ms("2028-02-29T00:00:00Z"));
        assert_eq!(year.interval(), "annual");
        assert_eq!(q.interval(), "quarterly");
    }

    #[test]
    fn weeks_start_on_their_weekday() {
        // 2026-12-03 is a Thursday
        let monday = BillingCycle::Weekly { anchor_weekday: 1 };
        let p = monday.period_containing(ms("2026-12-03T12:00:00Z"));
        assert_eq!(p.start_ms, ms("2026-11-30T00:00:00Z"));
        assert_eq!(p.end_ms, ms("2026-12-07T00:00:00Z"));
        let thursday = BillingCycle::Weekly { anchor_weekday: 4 };
        let p = thursday.period_containing(ms("2026-12-03T00:00:00Z"));
        assert_eq!(p.start_ms, ms("2026-12-03T00:00:00Z"));
        let p = thursday.period_containing(ms("2026-12-02T23:59:59.999Z"));
        assert_eq!(p.start_ms, ms("2026-11-26T00:00:00Z"));
        assert!(BillingCycle::Weekly { anchor_weekday: 8 }
            .validate()
            .is_err());
        let bad = BillingCycle::Months {
            months: 5,
            anchor_month: 1,
            anchor_day: 1,
        };
        assert!(bad.validate().unwrap_err().contains("months is 5"));
    }

    proptest! {
        #[test]
        fn every_cycle_tiles_time(
            t in 0i64..4_000_000_000_000,
            anchor in 1u32..=31,
            month in 1u32..=12,
            months in prop::sample::select(vec![1u32, 2, 3, 4, 6, 12]),
            weekday in 1u32..=7,
        ) {
            for c in [
                BillingCycle::Months { months, anchor_month: month, anchor_day: anchor },
                BillingCycle::Weekly { anchor_weekday: weekday },
            ] {
                let p = c.period_containing(t);
                prop_assert!(p.contains(t));
                prop_assert_eq!(c.next(&p).start_ms, p.end_ms);
                prop_assert_eq!(c.period_containing(p.end_ms - 1), p);
            }
        }

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
