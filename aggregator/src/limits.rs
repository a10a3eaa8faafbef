//! Per-customer bounds: what one customer may make the aggregator hold and write, so that a
//! single key at the allowed rate can neither grow the dedup memory nor the group-by and
//! UNIQUE_COUNT cardinality without limit, and one customer reaching a bound never changes
//! the verdict on another customer's events.
//!
//! It owns the decision (pure: every input is an argument, nothing is read from a clock or
//! a server) and the state it is made from; `recovery.rs` loads that state, `consumer.rs`
//! asks for the verdict. It does not own the dedup set (`dedup.rs`).
//!
//! | limit | counted per customer | reason |
//! |---|---|---|
//! | `customer_events_per_sec` × 60 | new identities in one UTC minute of received time | `rate_limited` |
//! | `customer_ids_max` | new identities received within the dedup horizon (minutes `slice(r) - K + 1 ..= slice(r)`, `K = ceil(horizon / 60)`) | `too_many_ids` |
//! | `groups_per_meter_day_max` | distinct (agent, group-by values) per meter and UTC day of event time | `too_many_groups` |
//! | `unique_values_per_meter_day_max` | distinct values of a UNIQUE_COUNT meter per UTC day of event time | `too_many_values` |
//!
//! # Why a verdict survives a crash
//! A message is judged only when it is new to the dedup set and its day is not sealed, and
//! only against the events *accepted before it in stream order*: those committed (loaded from
//! ClickHouse at a takeover: `usage_raw` for the counts, `usage_partials` for groups and
//! values) and those pending in the batch in flight. Messages are decided in stream order
//! (a takeover reads again from the ack floor) and batches commit in that order, so after a
//! crash a message that was not committed sees exactly the accepted events it saw before,
//! and gets the same verdict; one that was refused but whose ack was lost sees a superset
//! (later events of its committed batch), and every count only grows with it, so it is
//! refused again. Times are JetStream's received timestamps (seconds), as stored in
//! `usage_raw.received_at`, never the clock of the instance. An event is all or nothing: it
//! is refused whole if any of its meters would pass a bound, and nothing of it is counted.
//!
//! Counts are kept per minute ("slice") of received time, and the ranges loaded and expired
//! are whole minutes (`aligned`), so the counts of every window a message may be judged in
//! are complete (see `consumer.rs`, `cover`).
//!
//! # Memory
//! Per customer: one map entry per minute with events in the horizon (at most
//! `horizon / 60`), and per (meter, day) held (the days not yet sealed) one 8-byte hash per
//! series and per distinct value, at most the two cardinality limits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasherDefault;

use tally_domain::meter::MeterReading;
use tally_domain::{Aggregation, Meter, Reason};
use xxhash_rust::xxh3::Xxh3;

use crate::classify::Rejection;
use crate::config::AggregatorConfig;
use crate::dedup::KeyHasher;

/// Counts are kept per this many seconds of received time.
pub const SLICE_SECS: u32 = 60;

const DAY_MS: i64 = 86_400_000;

/// `secs` rounded down to a whole slice.
pub fn aligned(secs: u32) -> u32 {
    secs - secs % SLICE_SECS
}

/// The UTC day (days since the epoch) of an event time.
pub fn day_of_ms(time_ms: i64) -> u32 {
    u32::try_from(time_ms.div_euclid(DAY_MS)).unwrap_or(0)
}

/// The UTC day of a time in seconds.
pub fn day_of_secs(secs: u32) -> u32 {
    secs / 86_400
}

/// The bounds, from `[aggregator]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// New identities per customer per slice.
    pub events_per_slice: u64,
    /// New identities per customer within `horizon_slices`.
    pub ids_max: u64,
    /// Slices the ids window spans (`ceil(dedup_horizon_secs / 60)`).
    pub horizon_slices: u32,
    /// Distinct (agent, group values) per customer, meter and day.
    pub groups_max: usize,
    /// Distinct UNIQUE_COUNT values per customer, meter and day.
    pub values_max: usize,
}

impl Bounds {
    pub fn from_config(cfg: &AggregatorConfig) -> Bounds {
        let horizon = cfg.dedup_horizon_secs.div_ceil(u64::from(SLICE_SECS));
        Bounds {
            events_per_slice: cfg
                .customer_events_per_sec
                .saturating_mul(u64::from(SLICE_SECS)),
            ids_max: cfg.customer_ids_max,
            horizon_slices: u32::try_from(horizon).unwrap_or(u32::MAX).max(1),
            groups_max: cfg.groups_per_meter_day_max,
            values_max: cfg.unique_values_per_meter_day_max,
        }
    }
}

type HashSet64 = HashSet<u64, BuildHasherDefault<KeyHasher>>;

/// The series and distinct values of one (meter, day) of a customer.
#[derive(Debug, Default)]
struct DayState {
    series: HashSet64,
    values: HashSet64,
}

/// One customer's counts.
#[derive(Debug, Default)]
struct Customer {
    /// Accepted identities per slice of received time.
    slices: BTreeMap<u32, u64>,
    /// The ids window's sum as of a slice: `(slice, sum of slice - K + 1 ..= slice)`,
    /// recomputed when a message of another slice comes (about once a minute).
    window: Option<(u32, u64)>,
    /// (meter index, day) -> its series and values.
    days: HashMap<(u16, u32), DayState>,
}

impl Customer {
    fn window_sum(&mut self, slice: u32, horizon_slices: u32) -> u64 {
        match self.window {
            Some((s, sum)) if s == slice => sum,
            _ => {
                let from = slice.saturating_sub(horizon_slices - 1);
                let sum = self.slices.range(from..=slice).map(|(_, n)| *n).sum();
                self.window = Some((slice, sum));
                sum
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.slices.is_empty() && self.days.is_empty()
    }

    /// The customer's new events in this minute and its ids within the dedup horizon, against
    /// their bounds.
    fn judge_rate(
        &mut self,
        bounds: &Bounds,
        slice: u32,
        c: &Candidate<'_>,
    ) -> Result<(), Rejection> {
        let in_slice = self.slices.get(&slice).copied().unwrap_or(0);
        if in_slice >= bounds.events_per_slice {
            return Err(refusal(
                Reason::RateLimited,
                "subject",
                format!(
                    "customer {} has sent {} new events in this minute (received {}), the limit is \
                     {} (aggregator.customer_events_per_sec = {} per second, judged per minute)",
                    c.customer,
                    in_slice,
                    minute(slice),
                    bounds.events_per_slice,
                    bounds.events_per_slice / u64::from(SLICE_SECS)
                ),
            ));
        }
        let ids = self.window_sum(slice, bounds.horizon_slices);
        if ids >= bounds.ids_max {
            return Err(refusal(
                Reason::TooManyIds,
                "id",
                format!(
                    "customer {} has {} event ids within the dedup horizon, the limit is {} \
                     (aggregator.customer_ids_max)",
                    c.customer, ids, bounds.ids_max
                ),
            ));
        }
        Ok(())
    }

    /// Each reading's series (and distinct value, for a UNIQUE_COUNT meter) against the
    /// meter's bounds on the event's day; what to count when every reading passes: (meter,
    /// series, value).
    fn judge_meters(
        &self,
        bounds: &Bounds,
        unique: &[bool],
        day: u32,
        c: &Candidate<'_>,
    ) -> Result<Vec<(u16, u64, Option<u64>)>, Rejection> {
        let mut adds: Vec<(u16, u64, Option<u64>)> = Vec::with_capacity(c.readings.len());
        for (m, reading) in c.readings {
            let meter = u16::try_from(*m).unwrap_or(u16::MAX);
            let series = series_hash(c.agent, &reading.group_values);
            let value = unique
                .get(*m)
                .copied()
                .unwrap_or(false)
                .then(|| value_hash(&reading.unique_value));
            if let Some(d) = self.days.get(&(meter, day)) {
                if !d.series.contains(&series) && d.series.len() >= bounds.groups_max {
                    return Err(refusal(
                        Reason::TooManyGroups,
                        "data",
                        format!(
                            "customer {} already has {} series (agent and group-by values) of meter \
                             #{m} on {}, the limit is {} (aggregator.groups_per_meter_day_max)",
                            c.customer,
                            d.series.len(),
                            day_text(day),
                            bounds.groups_max
                        ),
                    ));
                }
                if let Some(v) = value {
                    if !d.values.contains(&v) && d.values.len() >= bounds.values_max {
                        return Err(refusal(
                            Reason::TooManyValues,
                            "data",
                            format!(
                                "customer {} already has {} distinct values of UNIQUE_COUNT meter \
                                 #{m} on {}, the limit is {} \
                                 (aggregator.unique_values_per_meter_day_max)",
                                c.customer,
                                d.values.len(),
                                day_text(day),
                                bounds.values_max
                            ),
                        ));
                    }
                }
            }
            adds.push((meter, series, value));
        }
        Ok(adds)
    }

    /// Counts an admitted event: one in its slice (and the cached window), its series and
    /// values on its day.
    fn count(&mut self, slice: u32, day: u32, adds: Vec<(u16, u64, Option<u64>)>) {
        *self.slices.entry(slice).or_insert(0) += 1;
        if let Some((s, sum)) = self.window.as_mut() {
            if *s == slice {
                *sum += 1;
            }
        }
        for (meter, series, value) in adds {
            let d = self.days.entry((meter, day)).or_default();
            d.series.insert(series);
            if let Some(v) = value {
                d.values.insert(v);
            }
        }
    }
}

/// The hash of a series: the agent and the group values, each length-prefixed.
pub fn series_hash(agent: &str, group_values: &[String]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&(agent.len() as u32).to_le_bytes());
    h.update(agent.as_bytes());
    for v in group_values {
        h.update(&(v.len() as u32).to_le_bytes());
        h.update(v.as_bytes());
    }
    h.digest()
}

/// The hash of a UNIQUE_COUNT value.
pub fn value_hash(value: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(value.as_bytes())
}

/// What an event would add: its customer, agent, event time and readings.
pub struct Candidate<'a> {
    pub customer: &'a str,
    pub agent: &'a str,
    pub time_ms: i64,
    /// When JetStream received it (seconds).
    pub received_secs: u32,
    pub readings: &'a [(usize, MeterReading)],
}

/// The highest share of each bound any customer uses (for the gauges).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    pub events_per_minute: f64,
    pub ids: f64,
    pub groups: f64,
    pub unique_values: f64,
}

/// Every customer's counts, and the bounds.
#[derive(Debug)]
pub struct Limits {
    bounds: Bounds,
    /// Which meters are UNIQUE_COUNT (by index into the classifier's meters).
    unique: Vec<bool>,
    customers: HashMap<Box<str>, Customer>,
}

impl Limits {
    pub fn new(bounds: Bounds, meters: &[Meter]) -> Limits {
        Limits {
            bounds,
            unique: meters
                .iter()
                .map(|m| m.aggregation == Aggregation::UniqueCount)
                .collect(),
            customers: HashMap::new(),
        }
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    fn customer(&mut self, customer: &str) -> &mut Customer {
        if !self.customers.contains_key(customer) {
            self.customers.insert(customer.into(), Customer::default());
        }
        self.customers
            .get_mut(customer)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Judges a new event against its customer's bounds and, if it passes, counts it (it is
    /// accepted into the batch in flight). A refusal counts nothing.
    pub fn admit(&mut self, c: &Candidate<'_>) -> Result<(), Rejection> {
        let bounds = self.bounds;
        let slice = c.received_secs / SLICE_SECS;
        let day = day_of_ms(c.time_ms);
        if !self.customers.contains_key(c.customer) {
            self.customers
                .insert(c.customer.into(), Customer::default());
        }
        let unique = &self.unique;
        let Some(state) = self.customers.get_mut(c.customer) else {
            unreachable!("inserted above")
        };
        state.judge_rate(&bounds, slice, c)?;
        // every meter first: an event is refused whole or counted whole
        let adds = state.judge_meters(&bounds, unique, day, c)?;
        state.count(slice, day, adds);
        Ok(())
    }

    /// Counts a committed identity of `customer` received at `received_secs` (recovery).
    pub fn count_committed(&mut self, customer: &str, received_secs: u32) {
        let c = self.customer(customer);
        *c.slices.entry(received_secs / SLICE_SECS).or_insert(0) += 1;
        c.window = None;
    }

    /// Records a committed series of `customer`'s meter `meter` on `day` (recovery).
    pub fn add_series(&mut self, customer: &str, meter: usize, day: u32, series: u64) {
        let meter = u16::try_from(meter).unwrap_or(u16::MAX);
        self.customer(customer)
            .days
            .entry((meter, day))
            .or_default()
            .series
            .insert(series);
    }

    /// Records a committed distinct value of `customer`'s meter `meter` on `day` (recovery).
    pub fn add_value(&mut self, customer: &str, meter: usize, day: u32, value: u64) {
        let meter = u16::try_from(meter).unwrap_or(u16::MAX);
        self.customer(customer)
            .days
            .entry((meter, day))
            .or_default()
            .values
            .insert(value);
    }

    /// Forgets counts of slices received before `cutoff_secs` (whole slices) and the series
    /// and values of days before `from_day` or through `sealed_through_day` (no event can
    /// be accepted for them any more).
    pub fn expire(&mut self, cutoff_secs: u32, from_day: u32, sealed_through_day: Option<u32>) {
        let cutoff = cutoff_secs / SLICE_SECS;
        for c in self.customers.values_mut() {
            c.slices = c.slices.split_off(&cutoff);
            // recomputed on demand from the slices kept
            c.window = None;
            c.days.retain(|(_, day), _| {
                *day >= from_day && sealed_through_day.is_none_or(|s| *day > s)
            });
        }
        self.customers.retain(|_, c| !c.is_empty());
    }

    /// Customers with state.
    pub fn customers(&self) -> usize {
        self.customers.len()
    }

    /// The highest share of each bound any customer uses as of slice `now_secs / 60`.
    pub fn usage(&mut self, now_secs: u32) -> Usage {
        let b = self.bounds;
        let slice = now_secs / SLICE_SECS;
        let mut u = Usage::default();
        let ratio = |n: u64, max: u64| n as f64 / max.max(1) as f64;
        for c in self.customers.values_mut() {
            let in_slice = c.slices.get(&slice).copied().unwrap_or(0);
            u.events_per_minute = u.events_per_minute.max(ratio(in_slice, b.events_per_slice));
            let ids = c.window_sum(slice, b.horizon_slices);
            u.ids = u.ids.max(ratio(ids, b.ids_max));
            for d in c.days.values() {
                u.groups = u
                    .groups
                    .max(ratio(d.series.len() as u64, b.groups_max as u64));
                u.unique_values = u
                    .unique_values
                    .max(ratio(d.values.len() as u64, b.values_max as u64));
            }
        }
        u
    }
}

fn refusal(reason: Reason, field: &str, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        field: Some(field.to_owned()),
        detail: detail.into(),
    }
}

fn minute(slice: u32) -> String {
    tally_domain::period::rfc3339(i64::from(slice) * i64::from(SLICE_SECS) * 1000)
}

fn day_text(day: u32) -> String {
    let text = tally_domain::period::rfc3339(i64::from(day) * DAY_MS);
    text.split('T').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use tally_domain::meter::{validate_meters, MeterSpec};

    const T0: u32 = 1_795_726_800; // 2026-11-26T21:00:00Z, a whole minute

    fn meters() -> Vec<Meter> {
        let specs: Vec<MeterSpec> = serde_json::from_str(
            r#"[{"slug":"tokens","event_type":"llm.tokens","aggregation":"SUM","value_property":"$.tokens","group_by":{"model":"$.model"}},
                {"slug":"users","event_type":"llm.tokens","aggregation":"UNIQUE_COUNT","value_property":"$.user"}]"#,
        )
        .unwrap();
        validate_meters(specs).unwrap()
    }

    fn bounds() -> Bounds {
        Bounds {
            events_per_slice: 5,
            ids_max: 8,
            horizon_slices: 3,
            groups_max: 2,
            values_max: 3,
        }
    }

    fn readings(model: &str, user: &str) -> Vec<(usize, MeterReading)> {
        vec![
            (
                0,
                MeterReading {
                    value: Decimal::ONE,
                    unique_value: String::new(),
                    group_values: vec![model.to_owned()],
                },
            ),
            (
                1,
                MeterReading {
                    value: Decimal::ONE,
                    unique_value: user.to_owned(),
                    group_values: vec![],
                },
            ),
        ]
    }

    fn admit(
        l: &mut Limits,
        customer: &str,
        at: u32,
        r: &[(usize, MeterReading)],
    ) -> Option<Reason> {
        l.admit(&Candidate {
            customer,
            agent: "bot",
            time_ms: i64::from(at) * 1000,
            received_secs: at,
            readings: r,
        })
        .err()
        .map(|e| e.reason)
    }

    #[test]
    fn the_rate_is_judged_per_minute_of_received_time_and_per_customer() {
        let mut l = Limits::new(bounds(), &meters());
        let r = readings("m", "u");
        for i in 0..5 {
            assert_eq!(admit(&mut l, "acme", T0 + i, &r), None);
        }
        assert_eq!(
            admit(&mut l, "acme", T0 + 59, &r),
            Some(Reason::RateLimited)
        );
        // another customer in the same minute is not affected
        assert_eq!(admit(&mut l, "globex", T0 + 59, &r), None);
        // the next minute has its own budget
        assert_eq!(admit(&mut l, "acme", T0 + 60, &r), None);
    }

    #[test]
    fn ids_are_bounded_over_the_horizon_and_freed_as_it_moves_on() {
        let mut l = Limits::new(bounds(), &meters());
        let r = readings("m", "u");
        // 8 ids over three minutes fill the horizon window
        for (minute, n) in [(0, 3), (1, 3), (2, 2)] {
            for i in 0..n {
                assert_eq!(admit(&mut l, "acme", T0 + minute * 60 + i, &r), None);
            }
        }
        assert_eq!(
            admit(&mut l, "acme", T0 + 150, &r),
            Some(Reason::TooManyIds)
        );
        assert_eq!(admit(&mut l, "globex", T0 + 150, &r), None);
        // minute 3's window no longer holds minute 0's three
        assert_eq!(admit(&mut l, "acme", T0 + 180, &r), None);
    }

    #[test]
    fn series_and_unique_values_are_bounded_per_meter_and_day() {
        let mut l = Limits::new(
            Bounds {
                events_per_slice: 100,
                ids_max: 100,
                ..bounds()
            },
            &meters(),
        );
        assert_eq!(admit(&mut l, "acme", T0, &readings("a", "u1")), None);
        assert_eq!(admit(&mut l, "acme", T0, &readings("b", "u2")), None);
        // a third model is a third series
        assert_eq!(
            admit(&mut l, "acme", T0, &readings("c", "u3")),
            Some(Reason::TooManyGroups)
        );
        // known series pass; a third user fits, a fourth does not
        assert_eq!(admit(&mut l, "acme", T0, &readings("a", "u3")), None);
        assert_eq!(
            admit(&mut l, "acme", T0, &readings("b", "u4")),
            Some(Reason::TooManyValues)
        );
        // a refused event counted nothing: u4 is still new, c still unknown
        assert_eq!(admit(&mut l, "acme", T0, &readings("a", "u1")), None);
        // the next day starts afresh; other customers never shared the count
        assert_eq!(
            admit(&mut l, "acme", T0 + 86_400, &readings("c", "u4")),
            None
        );
        assert_eq!(admit(&mut l, "globex", T0, &readings("c", "u4")), None);
    }

    /// The state rebuilt from what was committed gives the verdicts the running state gave.
    #[test]
    fn state_rebuilt_from_committed_events_judges_alike() {
        let m = meters();
        let mut live = Limits::new(bounds(), &m);
        let mut committed = Vec::new();
        let mut verdicts = Vec::new();
        for i in 0..40u32 {
            let at = T0 + i * 13;
            let r = readings(&format!("m{}", i % 3), &format!("u{}", i % 5));
            let v = admit(&mut live, "acme", at, &r);
            if v.is_none() {
                committed.push((at, r));
            }
            verdicts.push(v);
        }
        let mut rebuilt = Limits::new(bounds(), &m);
        for (at, r) in &committed {
            rebuilt.count_committed("acme", *at);
            rebuilt.add_series(
                "acme",
                0,
                day_of_secs(*at),
                series_hash("bot", &r[0].1.group_values),
            );
            rebuilt.add_value(
                "acme",
                1,
                day_of_secs(*at),
                value_hash(&r[1].1.unique_value),
            );
        }
        // every later message gets the same verdict from both
        for i in 40..60u32 {
            let at = T0 + i * 13;
            let r = readings(&format!("m{}", i % 4), &format!("u{}", i % 6));
            assert_eq!(
                admit(&mut live, "acme", at, &r),
                admit(&mut rebuilt, "acme", at, &r),
                "message {i}"
            );
        }
        assert!(
            verdicts.iter().any(Option::is_some),
            "the test reaches a bound"
        );
    }

    #[test]
    fn expiry_keeps_whole_slices_and_unsealed_days() {
        let mut l = Limits::new(bounds(), &meters());
        let r = readings("m", "u");
        assert_eq!(admit(&mut l, "acme", T0, &r), None);
        assert_eq!(admit(&mut l, "acme", T0 + 61, &r), None);
        l.expire(aligned(T0 + 61), day_of_secs(T0), None);
        assert_eq!(l.customers(), 1);
        let day = day_of_secs(T0);
        l.expire(aligned(T0 + 200), day + 1, None);
        assert_eq!(l.customers(), 0, "old slices and days are gone");
        assert_eq!(aligned(T0 + 61), T0 + 60);
    }

    #[test]
    fn usage_reports_the_fullest_customer() {
        let mut l = Limits::new(bounds(), &meters());
        let r = readings("m", "u");
        for i in 0..4 {
            admit(&mut l, "acme", T0 + i, &r);
        }
        admit(&mut l, "globex", T0, &r);
        let u = l.usage(T0 + 30);
        assert_eq!(u.events_per_minute, 0.8);
        assert_eq!(u.ids, 0.5);
        assert_eq!(u.groups, 0.5);
        assert!((u.unique_values - 1.0 / 3.0).abs() < 1e-9);
    }
}
