//! ClickHouse insert cost of the aggregator's commit (raw events, meter readings, then the
//! commit marker) against a plain insert of the same rows with the `clickhouse` crate and no
//! marker, in the same run, on the local stack.

use std::time::Instant;

use chrono::Utc;
use hdrhistogram::Histogram;
use tally_aggregator::batch::Batch;
use tally_aggregator::classify::Classifier;
use tally_aggregator::{sink, AggregatorConfig};
use tally_ingest::synthetic::Fleet;
use tally_platform::testkit::TestEnv;

/// What one run measured.
#[derive(Debug)]
pub struct InsertFigures {
    /// Event and reading rows written.
    pub rows: usize,
    /// Rows per second of the plain insert (events and readings, no marker).
    pub plain: f64,
    /// Rows per second of the aggregator's commit (the same rows, then the marker).
    pub ours: f64,
    /// Milliseconds per batch, plain: p50, p99, max.
    pub plain_ms: (f64, f64, f64),
    /// Milliseconds per batch, ours: p50, p99, max.
    pub ours_ms: (f64, f64, f64),
}

fn ms(hist: &Histogram<u64>) -> (f64, f64, f64) {
    let at = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    (at(0.5), at(0.99), hist.max() as f64 / 1000.0)
}

/// Event and reading rows per second of a plain insert and of the aggregator's commit
/// including its marker, over `events` events in batches of `batch` events.
pub async fn run(env: &TestEnv, events: usize, batch: usize) -> anyhow::Result<InsertFigures> {
    let cfg = AggregatorConfig::default();
    let classifier = Classifier::new(crate::pipeline::meters(), "usage", &cfg);
    let mut fleet = Fleet::new(
        "customer",
        10,
        10,
        &format!("ins{}", Utc::now().timestamp_millis()),
        2,
    )?;
    let now = Utc::now().timestamp_millis();
    let mut batches = Vec::new();
    let mut rows = 0usize;
    for chunk_start in (0..events).step_by(batch) {
        let mut b = Batch::default();
        for seq in chunk_start..(chunk_start + batch).min(events) {
            let e = fleet.next_event(Utc::now());
            let subject = format!("usage.{}.{}", e.customer, e.agent);
            let acc = classifier
                .classify(&subject, &e.to_json(), now)
                .map_err(|r| anyhow::anyhow!("synthetic event refused: {}", r.detail))?;
            b.add_accepted(acc, seq as u64 + 1, cfg.window_secs);
        }
        rows += b.events.len() + b.readings();
        batches.push(b);
    }
    // alternate per batch, so both see the same server state (merges, caches)
    let db = env.db();
    let (mut plain_secs, mut ours_secs) = (0.0, 0.0);
    let (mut plain_hist, mut ours_hist) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    for (i, b) in batches.iter().enumerate() {
        let t = Instant::now();
        sink::write_rows(
            &db,
            b,
            classifier.meters(),
            &format!("plain-{i}"),
            cfg.window_secs,
            now,
        )
        .await?;
        plain_secs += t.elapsed().as_secs_f64();
        plain_hist.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        sink::commit(
            &db,
            b,
            classifier.meters(),
            &format!("ours-{i}"),
            "bench",
            cfg.window_secs,
            now,
        )
        .await?;
        ours_secs += t.elapsed().as_secs_f64();
        ours_hist.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(InsertFigures {
        rows,
        plain: rows as f64 / plain_secs,
        ours: rows as f64 / ours_secs,
        plain_ms: ms(&plain_hist),
        ours_ms: ms(&ours_hist),
    })
}
