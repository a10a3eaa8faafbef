//! Sealing over the real servers: windows whose every event is committed are written into
//! `usage_rollups` once, as `v_usage` shows them; a window that can still receive an event is
//! never sealed; a seal without its marker and two sealers racing change no billed usage, and a
//! reading committed into a sealed window still counts.

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use rust_decimal::Decimal;
use tally_aggregator::{seal, AggregatorConfig};
use tally_domain::CustomerId;
use tally_ingest::synthetic::Fleet;
use tally_ingest::{OutgoingEvent, Publisher};
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

use support::{expected_totals, fetch_totals, Totals};

async fn usage(db: &clickhouse::Client) -> Totals {
    fetch_totals(
        db,
        "SELECT customer, agent, meter, toString(sum(quantity)), sum(event_count) \
         FROM v_usage WHERE customer != 'tick' GROUP BY customer, agent, meter",
    )
    .await
}

/// Committed readings in windows not sealed yet.
async fn unsealed_readings(db: &clickhouse::Client) -> u64 {
    db.query(
        "SELECT count() FROM v_usage_readings WHERE customer != 'tick' \
         AND (customer, window_start, window_secs) NOT IN (SELECT customer, window_start, window_secs FROM usage_rollups \
         WHERE sealed = 1 AND batch_id IN (SELECT batch_id FROM usage_batches))",
    )
    .fetch_one()
    .await
    .expect("readings")
}

async fn publish(js: &jetstream::Context, prefix: &str, events: &[OutgoingEvent]) {
    let mut publisher = Publisher::new(js.clone(), prefix, 256);
    for e in events {
        publisher.publish(e).await.expect("publish");
    }
    publisher.flush().await.expect("acks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_windows_are_sealed_once_as_their_final_record() {
    let env = TestEnv::new("sealing").await;
    let cfg = AggregatorConfig {
        window_secs: 2,
        allowed_lateness_secs: 1,
        future_tolerance_secs: 1,
        dedup_horizon_secs: 2,
        seal_every_secs: 1,
        batch_max_events: 500,
        batch_max_wait_ms: 100,
        ..AggregatorConfig::default()
    };
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let js = jetstream::new(client.clone());
    streams::ensure(&js, &env.nats).await.expect("streams");
    let stop = Shutdown::new();
    let task = {
        let (db, nats_cfg, cfg, stop) = (env.db(), env.nats.clone(), cfg.clone(), stop.clone());
        tokio::spawn(async move {
            tally_aggregator::run(client, db, &nats_cfg, &cfg, support::meters(), stop).await
        })
    };

    // three seconds of usage across a few two-second windows
    let mut fleet = Fleet::new("seal", 3, 2, "seal", 5).expect("fleet");
    let mut events = Vec::new();
    for _ in 0..6 {
        let chunk: Vec<_> = (0..100).map(|_| fleet.next_event(Utc::now())).collect();
        publish(&js, &env.nats.subject_prefix, &chunk).await;
        events.extend(chunk);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let consumer = cfg.consumer_name();
    assert!(streams::wait_drained(&js, &env.nats.stream, &consumer, Duration::from_secs(30)).await);
    let db = env.db();
    assert_eq!(usage(&db).await, expected_totals(&events), "before sealing");

    // the last windows become final once a later message shows the stream has moved on
    let mut ticks = Fleet::new("tick", 1, 1, "tick", 6).expect("fleet");
    let deadline = Instant::now() + Duration::from_secs(60);
    while unsealed_readings(&db).await > 0 {
        assert!(Instant::now() < deadline, "windows were not sealed");
        let mut tick = ticks.next_event(Utc::now());
        tick.customer = CustomerId::new("tick").expect("id");
        publish(&js, &env.nats.subject_prefix, &[tick]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(usage(&db).await, expected_totals(&events), "after sealing");
    // the record: one committed seal per window, holding what v_usage showed
    let record = fetch_totals(
        &db,
        "SELECT customer, agent, meter, toString(sum(quantity)), sum(events) \
         FROM usage_rollups WHERE sealed = 1 AND customer != 'tick' \
         AND batch_id IN (SELECT batch_id FROM usage_batches) \
         GROUP BY customer, agent, meter",
    )
    .await;
    assert_eq!(record, expected_totals(&events), "the sealed record");
    let (seals, sealed_rows, by_sealer): (u64, u64, u64) = db
        .query(
            "SELECT uniqExact(batch_id), count(), countIf(batch_id IN \
             (SELECT batch_id FROM usage_batches WHERE consumer = 'sealer:aggregator')) \
             FROM usage_rollups WHERE sealed = 1 AND customer != 'tick'",
        )
        .fetch_one()
        .await
        .expect("rollups");
    assert!(
        seals >= 1 && sealed_rows > 0,
        "{seals} seals, {sealed_rows} rows"
    );
    assert_eq!(
        by_sealer, sealed_rows,
        "every rollup row has its seal's marker"
    );

    // a reading committed into a sealed window later (only a lateness raised after the seal, or
    // a JetStream clock step back, could let one in) still counts in billed usage
    let (customer, window_start): (String, u32) = db
        .query(
            "SELECT customer, toUInt32(window_start) FROM usage_rollups \
             WHERE sealed = 1 AND meter = 'llm_tokens' AND customer != 'tick' LIMIT 1",
        )
        .fetch_one()
        .await
        .expect("a sealed window");
    db.query(
        "INSERT INTO usage_readings (customer, agent, event_id, meter, aggregation, \
         window_start, window_secs, value, batch_id) \
         VALUES (?, 'late-agent', 'zombie-copy', 'llm_tokens', 'SUM', toDateTime(?), 2, 1000000, 'zombie')",
    )
    .bind(&customer)
    .bind(window_start)
    .execute()
    .await
    .expect("zombie reading");
    db.query("INSERT INTO usage_batches (batch_id, consumer) VALUES ('zombie', 'aggregator')")
        .execute()
        .await
        .expect("zombie marker");
    let mut with_late = expected_totals(&events);
    with_late.insert(
        (customer.clone(), "late-agent".into(), "llm_tokens".into()),
        (Decimal::from(1_000_000), 1),
    );
    assert_eq!(
        usage(&db).await,
        with_late,
        "after a commit into a sealed window"
    );

    // a seal that stopped before its marker, and sealers racing, change no billed usage
    let far = u32::MAX - 1;
    seal::write_rollups(&db, "crashed-seal", far)
        .await
        .expect("rollups without marker");
    let now_ms = Utc::now().timestamp_millis();
    let (a, b) = tokio::join!(
        seal::seal(&db, "sealer:a", far, now_ms),
        seal::seal(&db, "sealer:b", far, now_ms)
    );
    a.expect("sealer a");
    b.expect("sealer b");
    assert_eq!(
        usage(&db).await,
        with_late,
        "after a crashed seal and two racing sealers"
    );

    stop.cancel();
    task.await.expect("join").expect("aggregator");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_with_an_unacknowledged_message_is_not_sealed() {
    let env = TestEnv::new("sealing_pending").await;
    let cfg = AggregatorConfig {
        window_secs: 2,
        allowed_lateness_secs: 1,
        future_tolerance_secs: 1,
        dedup_horizon_secs: 2,
        ..AggregatorConfig::default()
    };
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let js = jetstream::new(client);
    streams::ensure(&js, &env.nats).await.expect("streams");
    let consumers = cfg.all_consumer_names(&env.nats);
    assert_eq!(
        seal::final_until(&js, &env.nats.stream, &consumers)
            .await
            .expect("bound"),
        None,
        "an empty stream tells nothing"
    );
    // the consumer exists (as after a first start) but nothing consumes: messages pend
    let stream = js.get_stream(&env.nats.stream).await.expect("stream");
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(cfg.consumer_name()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let before_ms = Utc::now().timestamp_millis();
    let mut fleet = Fleet::new("pend", 2, 1, "pend", 7).expect("fleet");
    let first: Vec<_> = (0..50).map(|_| fleet.next_event(Utc::now())).collect();
    publish(&js, &env.nats.subject_prefix, &first).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later: Vec<_> = (0..50).map(|_| fleet.next_event(Utc::now())).collect();
    publish(&js, &env.nats.subject_prefix, &later).await;

    // bounded by the first unacknowledged message, not by the newest one
    let bound = seal::final_until(&js, &env.nats.stream, &consumers)
        .await
        .expect("bound")
        .expect("a consumer with messages");
    assert!(
        bound >= before_ms - 1000 && bound < before_ms + 2000,
        "bound {bound} is not the first pending message's receipt (published from {before_ms})"
    );
    // even with those events committed (as if by an instance that has not acked yet), their
    // windows stay live
    let db = env.db();
    for e in first.iter().chain(&later) {
        db.query(
            "INSERT INTO usage_readings (customer, agent, event_id, meter, aggregation, \
             window_start, window_secs, value, batch_id) \
             VALUES (?, ?, ?, 'tool_calls', 'COUNT', toDateTime(?), 2, 1, 'unacked')",
        )
        .bind(e.customer.as_str())
        .bind(e.agent.as_str())
        .bind(e.id.as_str())
        .bind((e.time.timestamp() / 2 * 2) as u32)
        .execute()
        .await
        .expect("reading");
    }
    db.query("INSERT INTO usage_batches (batch_id, consumer) VALUES ('unacked', 'aggregator')")
        .execute()
        .await
        .expect("marker");
    let seal_cfg = seal::SealConfig {
        stream: env.nats.stream.clone(),
        consumers,
        lateness_secs: cfg.allowed_lateness_secs,
        label: "sealer:aggregator".into(),
    };
    let done = seal::pass(&db, &js, &seal_cfg, 0, Utc::now().timestamp_millis())
        .await
        .expect("pass");
    assert_eq!(
        done.rows, 0,
        "nothing is final while the first message is unacknowledged"
    );
    let sealed: u64 = db
        .query("SELECT count() FROM usage_rollups")
        .fetch_one()
        .await
        .expect("rollups");
    assert_eq!(sealed, 0);
    env.cleanup().await;
}
