//! Billing periods in a subscription's time zone. A monthly cycle's boundaries (midnight of
//! the anchor day) are wall-clock times in the zone (an IANA name such as `Asia/Tokyo` or
//! `America/New_York`; default UTC), converted to instants with the zone's offset at each
//! boundary, so a period is still `[start, end)` in UTC milliseconds and daylight-saving
//! changes move boundaries correctly. Usage windows belong to the period containing their
//! start. Pure.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use tally_domain::{BillingCycle, Period};

/// A billing cycle in a time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZonedCycle {
    pub cycle: BillingCycle,
    /// None: UTC.
    pub zone: Option<Tz>,
}

impl From<BillingCycle> for ZonedCycle {
    fn from(cycle: BillingCycle) -> ZonedCycle {
        ZonedCycle { cycle, zone: None }
    }
}

impl ZonedCycle {
    /// The period containing the instant `time_ms`.
    pub fn period_containing(&self, time_ms: i64) -> Period {
        let Some(tz) = self.zone else {
            return self.cycle.period_containing(time_ms);
        };
        // the same cycle computed on wall-clock time, as if it were UTC ...
        let wall = self.cycle.period_containing(wall_clock(tz, time_ms));
        // ... then each wall-clock boundary back to an instant in the zone
        let period = Period {
            start_ms: instant(tz, wall.start_ms),
            end_ms: instant(tz, wall.end_ms),
        };
        debug_assert!(period.start_ms <= time_ms && time_ms < period.end_ms);
        period
    }

    /// The period after `period`.
    pub fn next(&self, period: &Period) -> Period {
        self.period_containing(period.end_ms)
    }

    /// The instant `days` calendar days after `time_ms` in the zone (the same wall-clock
    /// time; 23 or 25 hours for a day across a daylight-saving change).
    pub fn add_days(&self, time_ms: i64, days: u32) -> i64 {
        let day_ms = 86_400_000 * i64::from(days);
        let Some(tz) = self.zone else {
            return time_ms.saturating_add(day_ms);
        };
        instant(tz, wall_clock(tz, time_ms).saturating_add(day_ms))
    }
}

/// The wall-clock time in `tz` of the instant `time_ms`, as UTC-based milliseconds.
fn wall_clock(tz: Tz, time_ms: i64) -> i64 {
    DateTime::<Utc>::from_timestamp_millis(time_ms)
        .map(|t| {
            t.with_timezone(&tz)
                .naive_local()
                .and_utc()
                .timestamp_millis()
        })
        .unwrap_or(time_ms)
}

/// The instant of a wall-clock time (given as UTC-based milliseconds) in `tz`; in a gap
/// (clocks jumped forward over midnight) the first instant after it.
fn instant(tz: Tz, wall_ms: i64) -> i64 {
    let Some(naive) = DateTime::<Utc>::from_timestamp_millis(wall_ms).map(|t| t.naive_utc()) else {
        return wall_ms;
    };
    match tz.from_local_datetime(&naive).earliest() {
        Some(t) => t.timestamp_millis(),
        // a skipped wall-clock hour: take the same wall time an hour later
        None => tz
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
            .map_or(wall_ms, |t| t.timestamp_millis()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<DateTime<Utc>>().unwrap().timestamp_millis()
    }

    fn zoned(zone: &str) -> ZonedCycle {
        ZonedCycle {
            cycle: BillingCycle::Monthly { anchor_day: 1 },
            zone: Some(zone.parse().unwrap()),
        }
    }

    #[test]
    fn a_tokyo_month_starts_at_tokyo_midnight() {
        let p = zoned("Asia/Tokyo").period_containing(ms("2026-10-31T15:00:00Z"));
        // 2026-11-01T00:00 in Tokyo is 2026-10-31T15:00Z
        assert_eq!(p.start_ms, ms("2026-10-31T15:00:00Z"));
        assert_eq!(p.end_ms, ms("2026-11-30T15:00:00Z"));
        // one millisecond earlier is still October in Tokyo
        let oct = zoned("Asia/Tokyo").period_containing(ms("2026-10-31T14:59:59.999Z"));
        assert_eq!(oct.end_ms, p.start_ms);
    }

    #[test]
    fn daylight_saving_moves_the_boundaries() {
        // New York: November 2026 starts on EDT (UTC-4) and December on EST (UTC-5)
        let p = zoned("America/New_York").period_containing(ms("2026-11-15T12:00:00Z"));
        assert_eq!(p.start_ms, ms("2026-11-01T04:00:00Z"));
        assert_eq!(p.end_ms, ms("2026-12-01T05:00:00Z"));
        let next = zoned("America/New_York").next(&p);
        assert_eq!(next.start_ms, p.end_ms);
    }

    #[test]
    fn a_berlin_week_across_the_dst_change_has_169_hours() {
        // clocks go back on Sunday 2026-10-25: the week from Monday Oct 19 00:00 CEST
        // (Oct 18 22:00Z) to Monday Oct 26 00:00 CET (Oct 25 23:00Z)
        let c = ZonedCycle {
            cycle: BillingCycle::Weekly { anchor_weekday: 1 },
            zone: Some("Europe/Berlin".parse().unwrap()),
        };
        let p = c.period_containing(ms("2026-10-22T12:00:00Z"));
        assert_eq!(p.start_ms, ms("2026-10-18T22:00:00Z"));
        assert_eq!(p.end_ms, ms("2026-10-25T23:00:00Z"));
        assert_eq!(p.end_ms - p.start_ms, 169 * 3_600_000);
        // 14 calendar days from Oct 20 09:00 CEST is Nov 3 09:00 CET
        assert_eq!(
            c.add_days(ms("2026-10-20T07:00:00Z"), 14),
            ms("2026-11-03T08:00:00Z")
        );
    }

    #[test]
    fn without_a_zone_periods_are_utc() {
        let c: ZonedCycle = BillingCycle::Monthly { anchor_day: 1 }.into();
        assert_eq!(
            c.period_containing(ms("2026-11-15T00:00:00Z")).start_ms,
            ms("2026-11-01T00:00:00Z")
        );
    }
}
