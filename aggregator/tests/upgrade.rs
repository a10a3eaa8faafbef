//! Issue 14, requirement 8: a store written by the storage before migration 0024 (raw events
//! in `usage_events`, readings in `usage_readings`, commit markers in `usage_batches`, the
//! identity (customer, id) folded at read time) keeps every committed event exactly once
//! after the upgrade. The aggregator copies the legacy rows once, at its first takeover, as a
//! batch under the partition lease; uncommitted legacy rows stay out, a legacy event committed
//! twice (the zombie the old design absorbed at read time) is copied once, a re-send of a
//! legacy event after the upgrade is a duplicate, and a restart copies nothing again.

mod support;

use std::time::Duration;

use chrono::Utc;
use rust_decimal::Decimal;
use tally_aggregator::AggregatorConfig;
use tally_ingest::{OutgoingEvent, Publisher};
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

/// A legacy event of `customer` with `tokens`, committed under `batch` (or left without a
/// marker when `batch` has none).
fn legacy_rows(
    customer: &str,
    id: &str,
    batch: &str,
    window: u32,
    tokens: u32,
) -> (String, String) {
    // the payload hash the old aggregator stored: a re-send with the same payload is a plain
    // duplicate of it
    let data = format!("{{\"tokens\":{tokens}}}");
    let hash = tally_aggregator::dedup::payload_hash("llm.tokens", i64::from(window) * 1000, &data);
    let event = format!(
        "('{customer}', 'bot', '{id}', 'llm.tokens', toDateTime({window}), {window}000, \
         '{data}', {hash}, '{batch}', 1, toDateTime({window}))"
    );
    let reading = format!(
        "('{customer}', 'bot', '{id}', 'llm_tokens', 'SUM', toDateTime({w}), 60, {window}000, \
         [], [], '{{}}', toDecimal128({tokens}, 9), '', '{batch}', toDateTime({window}))",
        w = window - window % 60
    );
    (event, reading)
}

async fn usage(db: &clickhouse::Client) -> (Decimal, u64) {
    let (q, n): (String, u64) = db
        .query("SELECT toString(sum(quantity)), sum(event_count) FROM v_usage")
        .fetch_one()
        .await
        .expect("usage");
    (q.parse::<Decimal>().unwrap_or_default().normalize(), n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_usage_is_copied_once_and_counts_exactly_once() {
    let env = TestEnv::new("upgrade").await;
    let db = env.db();
    let now = Utc::now().timestamp() as u32;
    let window = now - 600;
    // e1 and e2 committed by b1; e2 committed again by b2 (a zombie); e3 in b3, never marked
    let rows = [
        legacy_rows("acme", "e1", "b1", window, 10),
        legacy_rows("acme", "e2", "b1", window, 20),
        legacy_rows("acme", "e2", "b2", window, 20),
        legacy_rows("globex", "e3", "b3", window, 1000),
        legacy_rows("globex", "e4", "b2", window, 5),
    ];
    let events: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let readings: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    db.query(&format!(
        "INSERT INTO usage_events (customer, agent, event_id, event_type, time, time_ms, data, \
         payload_hash, batch_id, stream_seq, received_at) VALUES {}",
        events.join(", ")
    ))
    .execute()
    .await
    .expect("legacy events");
    db.query(&format!(
        "INSERT INTO usage_readings (customer, agent, event_id, meter, aggregation, window_start, \
         window_secs, time_ms, group_names, group_values, group_key, value, unique_value, \
         batch_id, inserted_at) VALUES {}",
        readings.join(", ")
    ))
    .execute()
    .await
    .expect("legacy readings");
    db.query(
        "INSERT INTO usage_batches (batch_id, consumer, first_seq, last_seq, events, rollups, \
         committed_at) VALUES ('b1', 'aggregator', 1, 2, 2, 2, now()), ('b2', 'aggregator', 3, 4, 2, 2, now())",
    )
    .execute()
    .await
    .expect("legacy markers");

    let js = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.expect("NATS"));
    streams::ensure(&js, &env.nats).await.expect("streams");
    let cfg = AggregatorConfig {
        batch_max_events: 100,
        batch_max_wait_ms: 100,
        lease_secs: 1,
        ..AggregatorConfig::default()
    };
    let run = |stop: Shutdown| {
        let (db, nats_cfg, cfg, url) = (
            env.db(),
            env.nats.clone(),
            cfg.clone(),
            env.nats.url.clone(),
        );
        tokio::spawn(async move {
            let client = async_nats::connect(&url).await.expect("NATS");
            tally_aggregator::run(client, db, &nats_cfg, &cfg, support::meters(), stop)
                .await
                .expect("aggregator");
        })
    };
    let stop = Shutdown::new();
    let agg = run(stop.clone());
    // e1 10 + e2 20 once + e4 5; e3 was never committed
    let want = (Decimal::from(35), 3);
    for _ in 0..100 {
        if usage(&db).await == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(usage(&db).await, want, "every committed legacy event once");
    let raw: u64 = db
        .query("SELECT count() FROM usage_raw WHERE batch_id NOT IN (SELECT batch_id FROM usage_aborts)")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(raw, 3, "one raw row per committed identity");

    // a re-send of a legacy event after the upgrade is a duplicate of the copied id
    let mut e2: OutgoingEvent = tally_ingest::synthetic::Fleet::new("x", 1, 1, "x", 1)
        .expect("fleet")
        .next_event(Utc::now());
    e2.customer = tally_domain::CustomerId::new("acme").unwrap();
    e2.agent = tally_domain::AgentId::new("bot").unwrap();
    e2.id = tally_domain::EventId::new("e2").unwrap();
    e2.event_type = "llm.tokens".into();
    e2.time = chrono::DateTime::from_timestamp(i64::from(window), 0).unwrap();
    e2.data = serde_json::json!({"tokens": 20});
    let mut publisher = Publisher::new(js.clone(), &env.nats.subject_prefix, 1);
    publisher.publish(&e2).await.expect("publish");
    publisher.flush().await.expect("ack");
    assert!(
        streams::wait_drained(&js, &env.nats.stream, "aggregator", Duration::from_secs(30)).await,
        "the re-send is consumed"
    );
    assert_eq!(usage(&db).await, want, "the re-send counts nothing");
    let mut dlq = js.get_stream(&env.nats.dlq_stream).await.expect("dlq");
    let records = dlq.info().await.expect("dlq info").state.messages;
    if records > 0 {
        let m = dlq.get_raw_message(1).await.expect("record");
        panic!("dead-lettered: {}", String::from_utf8_lossy(&m.payload));
    }

    // a restart copies nothing again
    stop.cancel();
    agg.await.unwrap();
    let stop = Shutdown::new();
    let agg = run(stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(usage(&db).await, want, "copied once");
    let copies: u64 = db
        .query("SELECT count() FROM usage_batches WHERE consumer = 'upgrade:0024'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(copies, 1);
    stop.cancel();
    agg.await.unwrap();
    env.cleanup().await;
}
