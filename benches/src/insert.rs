//! ClickHouse insert cost of the aggregator's commit (raw events, meter readings, then the
//! commit marker) against a plain insert of the same rows with the `clickhouse` crate and no
//! marker, in the same run, on the local stack.

use std::time::Instant;

use chrono::Utc;
use tally_aggregator::batch::Batch;
use tally_aggregator::classify::Classifier;
use tally_aggregator::{sink, AggregatorConfig};
use tally_ingest::synthetic::Fleet;
use tally_platform::testkit::TestEnv;

/// Event and reading rows per second: (plain insert, aggregator commit including its marker),
/// over `events` events in batches of `batch` events.
pub async fn run(env: &TestEnv, events: usize, batch: usize) -> anyhow::Result<(f64, f64, usize)> {
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
    }
    let plain = rows as f64 / plain_secs;
    let ours = rows as f64 / ours_secs;
    Ok((plain, ours, rows))
}
