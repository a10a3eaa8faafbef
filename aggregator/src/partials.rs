//! Folding a batch into per-window partials: for every (customer, agent, meter, group,
//! window) the batch touched, its events, sum, min, max, latest value and distinct values.
//! These rows are the rolled-up usage billing reads (`usage_partials`); they carry the
//! batch id and count exactly when the batch counts.
//!
//! Pure: a function of the batch's accepted events; no I/O, no clock. Keys borrow from the
//! batch, so folding allocates one entry per partial, never per event.

use std::collections::{BTreeSet, HashMap};

use rust_decimal::Decimal;
use tally_domain::{Aggregation, Meter};

use crate::batch::AcceptedEvent;

/// What identifies a partial: customer, agent, meter (index into the classifier's meters),
/// group values, window start (ms).
type Key<'a> = (&'a str, &'a str, usize, &'a [String], i64);

/// The usage of one (customer, agent, meter, group, window) within one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial<'a> {
    pub customer: &'a str,
    pub agent: &'a str,
    /// Index into the classifier's meters.
    pub meter: usize,
    pub group_values: &'a [String],
    pub window_start_ms: i64,
    pub events: u64,
    pub sum: Decimal,
    pub min: Decimal,
    pub max: Decimal,
    /// The value of the latest event: greatest (event time, event id).
    pub latest: Decimal,
    pub latest_time_ms: i64,
    pub latest_event_id: &'a str,
    /// UNIQUE_COUNT meters: the distinct values, sorted; empty for the others.
    pub unique_values: BTreeSet<&'a str>,
}

impl<'a> Partial<'a> {
    fn first(key: Key<'a>, value: Decimal, time_ms: i64, id: &'a str) -> Partial<'a> {
        let (customer, agent, meter, group_values, window_start_ms) = key;
        Partial {
            customer,
            agent,
            meter,
            group_values,
            window_start_ms,
            events: 0,
            sum: Decimal::ZERO,
            min: value,
            max: value,
            latest: value,
            latest_time_ms: time_ms,
            latest_event_id: id,
            unique_values: BTreeSet::new(),
        }
    }

    fn add(&mut self, value: Decimal, time_ms: i64, id: &'a str, unique: Option<&'a str>) {
        self.events += 1;
        // quantities are at most 10^15 and a batch at most 100,000 events: the sum stays
        // below 10^20, far inside Decimal's 7.9 * 10^28
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if (time_ms, id) > (self.latest_time_ms, self.latest_event_id) {
            self.latest = value;
            self.latest_time_ms = time_ms;
            self.latest_event_id = id;
        }
        if let Some(u) = unique {
            self.unique_values.insert(u);
        }
    }
}

/// The batch's partials, sorted by key (so the rows of a batch are always written in the
/// same order).
pub fn fold<'a>(events: &'a [AcceptedEvent], meters: &[Meter]) -> Vec<Partial<'a>> {
    let mut out: HashMap<Key<'a>, Partial<'a>> = HashMap::new();
    for e in events {
        let (customer, agent, id) = (e.event.customer(), e.event.agent(), e.event.id());
        for (m, reading) in &e.readings {
            let key = (
                customer,
                agent,
                *m,
                reading.group_values.as_slice(),
                e.window.start_ms,
            );
            let unique = (meters[*m].aggregation == Aggregation::UniqueCount)
                .then_some(reading.unique_value.as_str());
            out.entry(key)
                .or_insert_with(|| Partial::first(key, reading.value, e.event.time_ms, id))
                .add(reading.value, e.event.time_ms, id, unique);
        }
    }
    let mut rows: Vec<Partial<'a>> = out.into_values().collect();
    rows.sort_by(|a, b| {
        (
            a.customer,
            a.agent,
            a.meter,
            a.group_values,
            a.window_start_ms,
        )
            .cmp(&(
                b.customer,
                b.agent,
                b.meter,
                b.group_values,
                b.window_start_ms,
            ))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Classifier;
    use crate::config::AggregatorConfig;
    use tally_domain::meter::{validate_meters, MeterSpec};
    use tally_domain::{nats_msg_id, Window};

    const NOW: i64 = 1_795_726_800_000; // 2026-11-26T21:00:00Z

    fn meters() -> Vec<Meter> {
        let specs: Vec<MeterSpec> = serde_json::from_str(
            r#"[{"slug":"tokens","event_type":"t","aggregation":"SUM","value_property":"$.n","group_by":{"model":"$.m"}},
                {"slug":"users","event_type":"t","aggregation":"UNIQUE_COUNT","value_property":"$.u"},
                {"slug":"last","event_type":"t","aggregation":"LATEST","value_property":"$.n"}]"#,
        )
        .unwrap();
        validate_meters(specs).unwrap()
    }

    fn accepted(c: &Classifier, agent: &str, id: &str, time: &str, data: &str) -> AcceptedEvent {
        let body = format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"{agent}","subject":"acme","type":"t","time":"{time}","data":{data}}}"#
        );
        let subject = format!("usage.acme.{agent}");
        let msg_id = nats_msg_id("acme", agent, id);
        let acc = c
            .classify(&subject, Some(&msg_id), body.as_bytes(), NOW)
            .unwrap();
        let window = Window::containing(acc.event.time_ms, 60);
        AcceptedEvent {
            event: acc.event,
            window,
            readings: acc.readings,
            payload_hash: acc.payload_hash,
            stream_seq: 1,
            received_at: 0,
        }
    }

    #[test]
    fn a_batch_folds_into_one_partial_per_agent_meter_group_and_window() {
        let c = Classifier::new(meters(), "usage", &AggregatorConfig::default());
        let events = vec![
            accepted(
                &c,
                "a",
                "e1",
                "2026-11-26T20:59:10Z",
                r#"{"n":5,"m":"x","u":"alice"}"#,
            ),
            accepted(
                &c,
                "a",
                "e2",
                "2026-11-26T20:59:20Z",
                r#"{"n":"2.5","m":"x","u":"bob"}"#,
            ),
            accepted(
                &c,
                "a",
                "e3",
                "2026-11-26T20:59:20Z",
                r#"{"n":1,"m":"y","u":"alice"}"#,
            ),
            accepted(
                &c,
                "b",
                "e1",
                "2026-11-26T20:59:30Z",
                r#"{"n":7,"m":"x","u":"alice"}"#,
            ),
            accepted(
                &c,
                "a",
                "e4",
                "2026-11-26T20:58:59Z",
                r#"{"n":9,"m":"x","u":"carol"}"#,
            ),
        ];
        let rows = fold(&events, c.meters());
        // (agent, group values, window start, events, sum, min, max)
        type Partial<'a> = (&'a str, &'a [String], i64, u64, String, String, String);
        let tokens: Vec<Partial> = rows
            .iter()
            .filter(|p| p.meter == 0)
            .map(|p| {
                (
                    p.agent,
                    p.group_values,
                    p.window_start_ms,
                    p.events,
                    p.sum.to_string(),
                    p.min.to_string(),
                    p.max.to_string(),
                )
            })
            .collect();
        let w = |s: i64| NOW - 60_000 * s;
        let x = ["x".to_owned()];
        let y = ["y".to_owned()];
        assert_eq!(
            tokens,
            vec![
                ("a", &x[..], w(2), 1, "9".into(), "9".into(), "9".into()),
                ("a", &x[..], w(1), 2, "7.5".into(), "2.5".into(), "5".into()),
                ("a", &y[..], w(1), 1, "1".into(), "1".into(), "1".into()),
                ("b", &x[..], w(1), 1, "7".into(), "7".into(), "7".into()),
            ]
        );
        let users: Vec<Vec<&str>> = rows
            .iter()
            .filter(|p| p.meter == 1 && p.agent == "a" && p.window_start_ms == w(1))
            .map(|p| p.unique_values.iter().copied().collect())
            .collect();
        assert_eq!(users, vec![vec!["alice", "bob"]]);
        // LATEST: greatest (time, id): e2 and e3 share 20:59:20, e3 > e2
        let last = rows
            .iter()
            .find(|p| p.meter == 2 && p.agent == "a" && p.window_start_ms == w(1))
            .unwrap();
        assert_eq!(
            (last.latest.to_string(), last.latest_event_id),
            ("1".into(), "e3")
        );
        // the fold is exact: partial events sum to the readings
        let readings: usize = events.iter().map(|e| e.readings.len()).sum();
        assert_eq!(
            rows.iter().map(|p| p.events).sum::<u64>() as usize,
            readings
        );
    }
}
