//! The aggregator's per-event CPU cost, in process and single-threaded: classify (parse the
//! CloudEvent, validate, read every meter), check and reserve the id in the dedup set, fold
//! into the batch's windows; every `batch` events the batch is dropped and its ids committed,
//! as a flush would (the ClickHouse write itself is not part of this figure). Also the dedup
//! set's memory per committed id.

use std::time::Instant;

use crate::cputime::timed;

use bytes::Bytes;

use chrono::Utc;
use hdrhistogram::Histogram;
use tally_aggregator::batch::Batch;
use tally_aggregator::classify::Classifier;
use tally_aggregator::dedup::{event_key, Dedup, Seen};
use tally_aggregator::AggregatorConfig;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_ingest::synthetic::Fleet;

/// What one run measured.
#[derive(Debug)]
pub struct CpuReport {
    pub events: usize,
    /// Events per second of this thread's CPU time (wall time where the kernel does not say).
    pub events_per_sec: f64,
    /// Events per wall-clock second.
    pub events_per_wall_sec: f64,
    /// Share of the wall time the thread waited for a core (other processes), when known.
    pub waited_share: Option<f64>,
    /// Microseconds per batch of `batch` events: p50, p99, p99.9.
    pub batch_us: (u64, u64, u64),
    pub batch: usize,
    pub mean_event_bytes: usize,
}

fn classifier() -> Classifier {
    let specs: Vec<MeterSpec> = serde_json::from_value(serde_json::json!([
        {"slug": "llm_tokens", "event_type": "llm.tokens", "aggregation": "SUM",
         "value_property": "$.tokens", "group_by": {"model": "$.model", "kind": "$.kind"}},
        {"slug": "tool_calls", "event_type": "tool.call", "aggregation": "COUNT", "group_by": {"tool": "$.tool"}}
    ]))
    .expect("meter specs");
    Classifier::new(
        validate_meters(specs).expect("meters"),
        "usage",
        &AggregatorConfig::default(),
    )
}

/// `events` synthetic messages (10 customers, 10 agents each): subject and payload.
pub fn messages(events: usize) -> Vec<Msg> {
    let mut fleet = Fleet::new("customer", 10, 10, "bench", 1).expect("fleet");
    let now = Utc::now();
    (0..events)
        .map(|_| {
            let e = fleet.next_event(now);
            Msg {
                subject: format!("usage.{}.{}", e.customer, e.agent),
                msg_id: tally_domain::nats_msg_id(
                    e.customer.as_ref(),
                    e.agent.as_ref(),
                    e.id.as_ref(),
                ),
                payload: Bytes::from(e.to_json()),
            }
        })
        .collect()
}

/// One message as the aggregator receives it: subject, `Nats-Msg-Id`, payload.
pub struct Msg {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
}

/// Baseline: `serde_json::from_slice` of the same payloads into a `serde_json::Value` (a
/// generic parse that validates and allocates but checks, dedups and windows nothing), in
/// events per second on one thread.
pub fn baseline_value_parse(msgs: &[Msg]) -> f64 {
    let (fields, t) = timed(|| {
        let mut fields = 0usize;
        for m in msgs {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("synthetic JSON");
            fields += v.as_object().map_or(0, |o| o.len());
        }
        fields
    });
    std::hint::black_box(fields);
    t.per_core(msgs.len())
}

/// Runs `events` synthetic events (10 customers, 10 agents each) through the hot path.
pub fn run(events: usize, batch: usize) -> CpuReport {
    run_on(&messages(events), batch)
}

/// Runs `msgs` through the hot path in batches of `batch` events.
pub fn run_on(msgs: &[Msg], batch: usize) -> CpuReport {
    let events = msgs.len();
    let now = Utc::now();
    let mean_event_bytes = msgs.iter().map(|m| m.payload.len()).sum::<usize>() / events.max(1);
    let classifier = classifier();
    let mut dedup = Dedup::new();
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let now_ms = now.timestamp_millis();
    let ((), timing) = timed(|| {
        for chunk in msgs.chunks(batch) {
            let t = Instant::now();
            let mut b = Batch::with_capacity(batch);
            for (seq, m) in chunk.iter().enumerate() {
                let acc = classifier
                    .classify(&m.subject, Some(&m.msg_id), &m.payload, now_ms)
                    .expect("synthetic events are valid");
                if dedup.check(acc.key, acc.payload_hash) == Seen::New {
                    let (key, hash) = (acc.key, acc.payload_hash);
                    b.add_accepted(acc, seq as u64, 60);
                    dedup.reserve(key, hash, (now_ms / 1000) as u32);
                }
            }
            dedup.commit_pending();
            std::hint::black_box(&b);
            hist.record(t.elapsed().as_micros() as u64)
                .expect("in range");
        }
    });
    CpuReport {
        events,
        events_per_sec: timing.per_core(events),
        events_per_wall_sec: timing.per_wall(events),
        waited_share: timing.waited.map(|w| w / timing.wall.max(1e-9)),
        batch_us: (
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
        ),
        batch,
        mean_event_bytes,
    }
}

/// Live heap bytes the committed dedup set holds per id, for `ids` ids.
pub fn dedup_bytes_per_id(ids: usize) -> f64 {
    let keys = dedup_keys(ids);
    live_bytes_per_id(ids, || {
        let mut dedup = Dedup::new();
        for (i, k) in keys.iter().enumerate() {
            dedup.insert_committed(*k, i as u64, 0);
        }
        dedup
    })
}

/// Baseline: live heap bytes per id of a std `HashMap<u128, (u64, u32)>` (key, payload hash,
/// commit time) holding the same keys, as the first version of the set did.
pub fn hashmap_bytes_per_id(ids: usize) -> f64 {
    let keys = dedup_keys(ids);
    live_bytes_per_id(ids, || {
        let mut map = std::collections::HashMap::<u128, (u64, u32)>::new();
        for (i, k) in keys.iter().enumerate() {
            map.insert(*k, (i as u64, 0));
        }
        map
    })
}

fn dedup_keys(ids: usize) -> Vec<u128> {
    (0..ids)
        .map(|i| event_key("customer-1", "agent-1", &format!("id-{i}")))
        .collect()
}

/// Live bytes `build` leaves allocated (what it returns holds), per id. Meaningful only with
/// [`crate::alloc::Counting`] as the global allocator; 0 otherwise.
fn live_bytes_per_id<T>(ids: usize, build: impl FnOnce() -> T) -> f64 {
    crate::alloc::counting(true);
    let before = crate::alloc::live_bytes();
    let held = build();
    let after = crate::alloc::live_bytes();
    crate::alloc::counting(false);
    std::hint::black_box(&held);
    drop(held);
    (after - before) as f64 / ids.max(1) as f64
}
