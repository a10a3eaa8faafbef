//! The aggregator's per-event CPU cost, in process and single-threaded: classify (parse the
//! CloudEvent, validate, read every meter), check and reserve the id in the dedup set, fold
//! into the batch's windows; every `batch` events the batch is dropped and its ids committed,
//! as a flush would (the ClickHouse write itself is not part of this figure). Also the dedup
//! set's memory per committed id.

use std::time::Instant;

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
    pub events_per_sec: f64,
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

/// Runs `events` synthetic events (10 customers, 10 agents each) through the hot path.
pub fn run(events: usize, batch: usize) -> CpuReport {
    let mut fleet = Fleet::new("customer", 10, 10, "bench", 1).expect("fleet");
    let now = Utc::now();
    let msgs: Vec<(String, Vec<u8>)> = (0..events)
        .map(|_| {
            let e = fleet.next_event(now);
            (format!("usage.{}.{}", e.customer, e.agent), e.to_json())
        })
        .collect();
    let mean_event_bytes = msgs.iter().map(|m| m.1.len()).sum::<usize>() / events.max(1);
    let classifier = classifier();
    let mut dedup = Dedup::new();
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let now_ms = now.timestamp_millis();
    let started = Instant::now();
    for chunk in msgs.chunks(batch) {
        let t = Instant::now();
        let mut b = Batch::default();
        for (seq, (subject, payload)) in chunk.iter().enumerate() {
            let acc = classifier
                .classify(subject, payload, now_ms)
                .expect("synthetic events are valid");
            if dedup.check(acc.key, acc.payload_hash) == Seen::New {
                let (key, hash) = (acc.key, acc.payload_hash);
                b.add_accepted(acc, seq as u64, 60);
                dedup.reserve(key, hash);
            }
        }
        dedup.commit_pending((now_ms / 1000) as u32);
        std::hint::black_box(&b);
        hist.record(t.elapsed().as_micros() as u64)
            .expect("in range");
    }
    let secs = started.elapsed().as_secs_f64();
    CpuReport {
        events,
        events_per_sec: events as f64 / secs,
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
    crate::alloc::counting(true);
    let before = crate::alloc::live_bytes();
    let mut dedup = Dedup::new();
    for i in 0..ids {
        dedup.insert_committed(event_key("customer-1", &format!("id-{i}")), i as u64, 0);
    }
    let after = crate::alloc::live_bytes();
    crate::alloc::counting(false);
    std::hint::black_box(&dedup);
    (after - before) as f64 / ids as f64
}
