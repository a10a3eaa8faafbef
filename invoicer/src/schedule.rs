//! When the invoicer runs: a cron expression (`[invoicer] schedule`, five fields `minute hour
//! day-of-month month day-of-week`, optionally a leading seconds field, evaluated in UTC),
//! parsed with the `croner` crate. A pass closes every period that has ended and passed its
//! grace, so a missed tick only delays invoices; it never loses one. Pure: the caller passes
//! the instant.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
}

impl Schedule {
    /// Parses a cron expression; the error names what is wrong.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let cron = Cron::new(expr)
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("{expr:?}: {e}"))?;
        Ok(Schedule {
            expr: expr.to_owned(),
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.expr
    }

    /// The first tick strictly after `now_ms`.
    pub fn next_after(&self, now_ms: i64) -> Option<i64> {
        let now = DateTime::<Utc>::from_timestamp_millis(now_ms)?;
        self.cron
            .find_next_occurrence(&now, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// How long from `now_ms` to the next tick (a day when none can be found).
    pub fn until_next(&self, now_ms: i64) -> Duration {
        match self.next_after(now_ms) {
            Some(t) => Duration::from_millis(u64::try_from(t - now_ms).unwrap_or(0)),
            None => Duration::from_secs(86_400),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Schedule::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn next_tick_of_common_expressions() {
        let hourly = Schedule::parse("5 * * * *").unwrap();
        assert_eq!(
            hourly.next_after(ms("2026-11-27T03:04:59Z")),
            Some(ms("2026-11-27T03:05:00Z"))
        );
        assert_eq!(
            hourly.next_after(ms("2026-11-27T03:05:00Z")),
            Some(ms("2026-11-27T04:05:00Z")),
            "strictly after"
        );
        let daily = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(
            daily.next_after(ms("2026-12-31T03:00:00Z")),
            Some(ms("2027-01-01T02:30:00Z"))
        );
        let monthly = Schedule::parse("0 0 1 * *").unwrap();
        assert_eq!(
            monthly.next_after(ms("2026-02-15T00:00:00Z")),
            Some(ms("2026-03-01T00:00:00Z"))
        );
        let every_ten_seconds = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            every_ten_seconds.until_next(ms("2026-11-27T03:00:01Z")),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn bad_expressions_are_refused_by_name() {
        let e = Schedule::parse("61 * * * *").unwrap_err();
        assert!(e.contains("61 * * * *"), "{e}");
        assert!(Schedule::parse("every hour").is_err());
    }
}
