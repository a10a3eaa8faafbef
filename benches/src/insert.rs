//! ClickHouse insert cost of the aggregator's commit (an intent in the partition lease, raw
//! events, meter readings, window partials and the batch log, then the commit in the lease)
//! against a plain insert of the same rows with no lease, in the same run, on the local stack.

use std::time::Instant;

use chrono::Utc;
use hdrhistogram::Histogram;
use tally_aggregator::batch::Batch;
use tally_aggregator::classify::Classifier;
use tally_aggregator::lease::Lease;
use tally_aggregator::{sink, AggregatorConfig};
use tally_ingest::synthetic::Fleet;
use tally_platform::shutdown::Shutdown;
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
            let msg_id =
                tally_domain::nats_msg_id(e.customer.as_ref(), e.agent.as_ref(), e.id.as_ref());
            let acc = classifier
                .classify(&subject, Some(&msg_id), &e.to_json(), now)
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
    let meters = sink::Meters::new(classifier.meters());
    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await?);
    let lease_cfg = tally_aggregator::lease::for_aggregator(&env.nats, &cfg);
    let (lease, _) = Lease::acquire(&js, lease_cfg, "bench".into(), &Shutdown::new()).await?;
    for (i, b) in batches.iter().enumerate() {
        let target = |batch_id| sink::Target {
            batch_id,
            bseq: 0,
            part: 0,
            consumer: "bench",
            window_secs: cfg.window_secs,
            now_ms: now,
        };
        let plain = format!("plain-{i}");
        let t = Instant::now();
        sink::write(&db, b, &meters, target(&plain)).await?;
        plain_secs += t.elapsed().as_secs_f64();
        plain_hist.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        // the commit: intent in the partition lease, the same rows, commit in the lease
        let id = format!("ours-{i}");
        lease.intent(&id, &[]).await?;
        sink::write(&db, b, &meters, target(&id)).await?;
        lease.commit().await?;
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
