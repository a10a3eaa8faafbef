//! The aggregator against the real servers: rejections reach the dead-letter stream with
//! their reason and never count; a batch committed just before a crash is not counted again
//! when its unacknowledged messages are redelivered to a fresh aggregator.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tally_aggregator::batch::Batch;
use tally_aggregator::classify::Classifier;
use tally_aggregator::lease::Lease;
use tally_aggregator::sink;
use tally_e2e::{aggregator_config, meters, start_aggregator, wait_drained};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;

fn event(id: &str, customer: &str, agent: &str, ty: &str, time: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"{agent}","subject":"{customer}","type":"{ty}","time":"{time}","data":{data}}}"#
    )
}

/// Publishes `body` on `subject` (`<prefix>.<customer>.<agent>`) with the contract's
/// `Nats-Msg-Id` for event `id`.
async fn publish_raw(js: &async_nats::jetstream::Context, subject: String, id: &str, body: String) {
    let mut tokens = subject.rsplit('.');
    let (agent, customer) = (tokens.next().unwrap_or(""), tokens.next().unwrap_or(""));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        tally_domain::nats_msg_id(customer, agent, id).as_str(),
    );
    js.publish_with_headers(subject, headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
}

/// Total committed `llm_tokens` quantity (as exact decimal text) and event count.
async fn usage_total(env: &TestEnv) -> (String, u64) {
    let (q, n) = env
        .db()
        .query("SELECT toString(sum(quantity)), sum(event_count) FROM v_usage WHERE meter = 'llm_tokens'")
        .fetch_one::<(String, u64)>()
        .await
        .expect("usage query");
    (
        q.parse::<rust_decimal::Decimal>()
            .expect("decimal")
            .normalize()
            .to_string(),
        n,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_reach_the_dead_letter_stream_with_their_reason() {
    let mut env = TestEnv::new("agg_dead_letters").await;
    // a short duplicate window, so a re-send with another payload reaches the aggregator
    env.nats.duplicate_window_secs = 1;
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .unwrap();
    let now = Utc::now().to_rfc3339();
    let old = (Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let p = &env.nats.subject_prefix;
    let tokens = |n: &str| format!(r#"{{"tokens":{n},"model":"m","kind":"input"}}"#);
    let cases = [
        (
            "good",
            format!("{p}.acme.bot"),
            event("good", "acme", "bot", "llm.tokens", &now, &tokens("10")),
        ),
        ("malformed", format!("{p}.acme.bot"), "{not json".to_owned()),
        (
            "mismatch",
            format!("{p}.other.bot"),
            event("mismatch", "acme", "bot", "llm.tokens", &now, &tokens("1")),
        ),
        (
            "unknown",
            format!("{p}.acme.bot"),
            event("unknown", "acme", "bot", "no.such.type", &now, "{}"),
        ),
        (
            "late",
            format!("{p}.acme.bot"),
            event("late", "acme", "bot", "llm.tokens", &old, &tokens("1")),
        ),
        (
            "early",
            format!("{p}.acme.bot"),
            event("early", "acme", "bot", "llm.tokens", &future, &tokens("1")),
        ),
        (
            "negative",
            format!("{p}.acme.bot"),
            event("negative", "acme", "bot", "llm.tokens", &now, &tokens("-5")),
        ),
        (
            "float-ish",
            format!("{p}.acme.bot"),
            event(
                "float-ish",
                "acme",
                "bot",
                "llm.tokens",
                &now,
                &tokens("0.0000000001"),
            ),
        ),
    ];
    for (id, subject, body) in &cases {
        publish_raw(&js, subject.clone(), id, body.clone()).await;
    }
    let stop = Shutdown::new();
    let agg = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;
    // the same id again with another payload, after the first one is committed and after
    // JetStream's duplicate window: conflicting_duplicate
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_raw(
        &js,
        format!("{p}.acme.bot"),
        "good",
        event("good", "acme", "bot", "llm.tokens", &now, &tokens("99")),
    )
    .await;
    // a direct publisher that sets Nats-Msg-Id to the bare id (which JetStream deduplicates
    // against every customer's ids): msg_id_mismatch, never counted
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "bare-id");
    js.publish_with_headers(
        format!("{p}.acme.bot"),
        headers,
        event("bare-id", "acme", "bot", "llm.tokens", &now, &tokens("5")).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;

    assert_eq!(
        usage_total(&env).await,
        ("10".to_owned(), 1),
        "only the good event counts"
    );
    let dlq = js.get_stream(&env.nats.dlq_stream).await.unwrap();
    let consumer = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut reasons = Vec::new();
    while let Some(Ok(m)) = msgs.next().await {
        let record: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            m.subject.as_str(),
            format!(
                "{}.{}",
                env.nats.dlq_subject_prefix,
                record["reason"].as_str().unwrap()
            )
        );
        assert!(!record["detail"].as_str().unwrap().is_empty());
        reasons.push(record["reason"].as_str().unwrap().to_owned());
    }
    reasons.sort();
    let mut want = vec![
        "conflicting_duplicate",
        "invalid_quantity",
        "invalid_quantity",
        "malformed",
        "msg_id_mismatch",
        "subject_mismatch",
        "too_early",
        "too_late",
        "unknown_meter",
    ];
    want.sort();
    assert_eq!(reasons, want);
    stop.cancel();
    agg.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_committed_before_a_crash_is_not_counted_again() {
    let env = TestEnv::new("agg_crash_after_commit").await;
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .unwrap();
    let now = Utc::now().to_rfc3339();
    let p = env.nats.subject_prefix.clone();
    let bodies: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                format!("e{i}"),
                event(
                    &format!("e{i}"),
                    "acme",
                    "bot",
                    "llm.tokens",
                    &now,
                    &format!(r#"{{"tokens":{},"model":"m","kind":"output"}}"#, i + 1),
                ),
            )
        })
        .collect();
    for (id, body) in &bodies {
        publish_raw(&js, format!("{p}.acme.bot"), id, body.clone()).await;
    }
    // An aggregator held the partition, committed the first 120 events (intent, rows,
    // commit), then started a batch with event 150 (intent, rows) and died before acking.
    let cfg = aggregator_config();
    let classifier = Classifier::new(meters(), &p, &cfg);
    let lease_cfg = tally_aggregator::lease::for_aggregator(&env.nats, &cfg);
    let (dead, _) = Lease::acquire(&js, lease_cfg, "dead-holder".into(), &Shutdown::new())
        .await
        .unwrap();
    let batch_of = |range: std::ops::Range<usize>| {
        let mut batch = Batch::default();
        for i in range {
            let id = tally_domain::nats_msg_id("acme", "bot", &bodies[i].0);
            let acc = classifier
                .classify(
                    &format!("{p}.acme.bot"),
                    Some(&id),
                    bodies[i].1.as_bytes(),
                    Utc::now().timestamp_millis(),
                )
                .unwrap();
            batch.add_accepted(acc, i as u64 + 1, cfg.window_secs);
        }
        batch
    };
    let meters = sink::Meters::new(classifier.meters());
    let target = |batch_id| sink::Target {
        batch_id,
        bseq: 0,
        part: 0,
        consumer: "aggregator",
        window_secs: cfg.window_secs,
        now_ms: Utc::now().timestamp_millis(),
    };
    dead.intent("committed-batch", &[]).await.unwrap();
    sink::write(
        &env.db(),
        &batch_of(0..120),
        &meters,
        target("committed-batch"),
    )
    .await
    .unwrap();
    dead.commit().await.unwrap();
    // the unfinished batch's rows are written; it counts until a takeover aborts it
    dead.intent("unfinished-batch", &[]).await.unwrap();
    sink::write(
        &env.db(),
        &batch_of(150..151),
        &meters,
        target("unfinished-batch"),
    )
    .await
    .unwrap();
    assert_eq!(usage_total(&env).await.1, 121);

    // A fresh aggregator waits out the silent holder's lease, aborts the unfinished batch and
    // gets all 200 messages redelivered (none was acked).
    let stop = Shutdown::new();
    let agg = start_aggregator(&env, cfg, stop.clone()).await;
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;
    let want: u64 = (1..=200).sum();
    assert_eq!(
        usage_total(&env).await,
        (want.to_string(), 200),
        "every event exactly once"
    );
    // the dead holder, were it to wake up, is fenced: it can neither commit nor start a batch
    assert!(matches!(
        dead.commit().await,
        Err(tally_aggregator::lease::LeaseError::Fenced { .. })
    ));
    stop.cancel();
    agg.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_spanning_two_partitions_counts_in_both_or_in_neither() {
    let env = TestEnv::new("agg_two_partitions").await;
    let p = env.nats.subject_prefix.clone();
    let cfg = aggregator_config();
    let classifier = Classifier::new(meters(), &p, &cfg);
    // 00:00:30 on December 1st: one event from November's last minute, one from December's first
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:30Z")
        .unwrap()
        .timestamp_millis();
    let body = |id: &str, time: &str, n: u32| {
        event(
            id,
            "acme",
            "bot",
            "llm.tokens",
            time,
            &format!(r#"{{"tokens":{n},"model":"m","kind":"input"}}"#),
        )
    };
    let mut batch = Batch::default();
    for (i, (id, b)) in [
        ("nov", body("nov", "2026-11-30T23:59:45Z", 7)),
        ("dec", body("dec", "2026-12-01T00:00:10Z", 11)),
    ]
    .iter()
    .enumerate()
    {
        let msg_id = tally_domain::nats_msg_id("acme", "bot", id);
        let acc = classifier
            .classify(&format!("{p}.acme.bot"), Some(&msg_id), b.as_bytes(), now)
            .unwrap();
        batch.add_accepted(acc, i as u64 + 1, cfg.window_secs);
    }
    let db = env.db();
    let meters = sink::Meters::new(classifier.meters());
    let target = |batch_id| sink::Target {
        batch_id,
        bseq: 0,
        part: 0,
        consumer: "aggregator",
        window_secs: cfg.window_secs,
        now_ms: now,
    };
    // first attempt: rows land in both monthly partitions, then the attempt is aborted (a
    // failed insert elsewhere, or a takeover)
    sink::write(&db, &batch, &meters, target("attempt-1"))
        .await
        .unwrap();
    sink::abort(&db, &["attempt-1".to_owned()], 0, "failed_attempt", now)
        .await
        .unwrap();
    let months = || async {
        db.query("SELECT toString(toYYYYMM(window_start)), toString(sum(quantity)) FROM v_usage GROUP BY window_start ORDER BY window_start")
            .fetch_all::<(String, String)>()
            .await
            .unwrap()
            .into_iter()
            .map(|(m, q)| (m, q.parse::<rust_decimal::Decimal>().unwrap().normalize().to_string()))
            .collect::<Vec<_>>()
    };
    assert!(
        months().await.is_empty(),
        "neither month counts once the attempt is aborted"
    );
    // the retry under a new batch id counts in both
    sink::write(&db, &batch, &meters, target("attempt-2"))
        .await
        .unwrap();
    assert_eq!(
        months().await,
        vec![
            ("202611".to_owned(), "7".to_owned()),
            ("202612".to_owned(), "11".to_owned())
        ]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_count_and_latest_are_exact_across_windows_batches_and_restarts() {
    use tally_domain::meter::{validate_meters, MeterSpec};
    let mut env = TestEnv::new("agg_unique_latest").await;
    // a short duplicate window, so the re-sends below reach the aggregator's dedup
    env.nats.duplicate_window_secs = 1;
    let specs: Vec<MeterSpec> = serde_json::from_value(serde_json::json!([
        {"slug": "active_users", "event_type": "session", "aggregation": "UNIQUE_COUNT", "value_property": "$.user"},
        {"slug": "seats", "event_type": "seats", "aggregation": "LATEST", "value_property": "$.seats"}
    ]))
    .unwrap();
    let meters = validate_meters(specs).unwrap();
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .unwrap();
    let p = env.nats.subject_prefix.clone();
    let ten_min_ago = (Utc::now() - chrono::Duration::minutes(10)).timestamp();
    let base =
        chrono::DateTime::from_timestamp(ten_min_ago - ten_min_ago.rem_euclid(60), 0).unwrap(); // a window start
    let at = |min: i64, sec: i64| {
        (base + chrono::Duration::minutes(min) + chrono::Duration::seconds(sec)).to_rfc3339()
    };
    // users across three windows (u1 in all of them), seats changing; the last seats event is sent first
    let acme = |id: &'static str, ty: &str, min: i64, sec: i64, data: &str| {
        (id, event(id, "acme", "bot", ty, &at(min, sec), data))
    };
    let sends = [
        acme("s1", "session", 0, 1, r#"{"user":"u1"}"#),
        acme("s2", "session", 0, 2, r#"{"user":"u2"}"#),
        acme("s3", "session", 1, 1, r#"{"user":"u1"}"#),
        acme("s4", "session", 2, 1, r#"{"user":"u1"}"#),
        acme("s5", "session", 2, 2, r#"{"user":"u3"}"#),
        acme("k3", "seats", 0, 50, r#"{"seats":"12"}"#),
        acme("k1", "seats", 0, 10, r#"{"seats":"5"}"#),
        acme("k2", "seats", 0, 30, r#"{"seats":"8.5"}"#),
    ];
    let run = |stop: Shutdown| {
        let (db, nats_cfg, meters, url) = (
            env.db(),
            env.nats.clone(),
            meters.clone(),
            env.nats.url.clone(),
        );
        tokio::spawn(async move {
            let client = async_nats::connect(&url).await.unwrap();
            let cfg = tally_aggregator::AggregatorConfig {
                ack_wait_secs: 5,
                ..aggregator_config()
            };
            tally_aggregator::run(client, db, &nats_cfg, &cfg, meters, stop).await
        })
    };
    // half the events, a restart, the rest and a re-send of each
    for (id, body) in &sends[..4] {
        publish_raw(&js, format!("{p}.acme.bot"), id, body.clone()).await;
    }
    let stop = Shutdown::new();
    let first = run(stop.clone());
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;
    stop.cancel();
    first.await.unwrap().unwrap();
    for (id, body) in &sends[4..] {
        publish_raw(&js, format!("{p}.acme.bot"), id, body.clone()).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (id, body) in &sends {
        publish_raw(&js, format!("{p}.acme.bot"), id, body.clone()).await;
    }
    let stop = Shutdown::new();
    let second = run(stop.clone());
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;

    let db = env.db();
    let users: u64 = db
        .query("SELECT uniqExact(unique_value) FROM v_usage_readings WHERE meter = 'active_users'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(users, 3, "u1, u2, u3 over the period");
    let per_window: Vec<String> = db
        .query("SELECT toString(quantity) FROM v_usage WHERE meter = 'active_users' ORDER BY window_start")
        .fetch_all()
        .await
        .unwrap();
    let per_window: Vec<String> = per_window
        .iter()
        .map(|q| {
            q.parse::<rust_decimal::Decimal>()
                .unwrap()
                .normalize()
                .to_string()
        })
        .collect();
    assert_eq!(per_window, vec!["2", "1", "2"], "distinct users per window");
    let seats: String = db
        .query("SELECT toString(quantity) FROM v_usage WHERE meter = 'seats'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        seats
            .parse::<rust_decimal::Decimal>()
            .unwrap()
            .normalize()
            .to_string(),
        "12",
        "the latest by event time"
    );
    stop.cancel();
    second.await.unwrap().unwrap();
    env.cleanup().await;
}

/// Issue 16, finding 3: a 700 KB event of escaped quotes is refused as `too_large`, and its
/// dead-letter record (the payload escaped inside JSON) used to exceed NATS's 1 MB payload
/// limit: the aggregator retried that publish forever and the good events behind it were
/// never counted. The record now carries a bounded excerpt and the size; the partition flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_record_would_not_fit_a_message_does_not_stall_the_partition() {
    let env = TestEnv::new("agg_huge_reject").await;
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .unwrap();
    let p = env.nats.subject_prefix.clone();
    let now = Utc::now().to_rfc3339();
    let quotes = "\\\"".repeat(350_000); // 700 KB of escaped quotes
    let huge = event(
        "huge",
        "acme",
        "bot",
        "llm.tokens",
        &now,
        &format!(r#"{{"tokens":1,"model":"m","kind":"input","note":"{quotes}"}}"#),
    );
    assert!(huge.len() > 700_000);
    publish_raw(&js, format!("{p}.acme.bot"), "huge", huge).await;
    for i in 0..10 {
        let body = event(
            &format!("ok-{i}"),
            "acme",
            "bot",
            "llm.tokens",
            &now,
            r#"{"tokens":3,"model":"m","kind":"input"}"#,
        );
        publish_raw(&js, format!("{p}.acme.bot"), &format!("ok-{i}"), body).await;
    }
    let stop = Shutdown::new();
    let agg = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;
    assert_eq!(
        usage_total(&env).await,
        ("30".to_owned(), 10),
        "the good events count"
    );
    let dlq = js.get_stream(&env.nats.dlq_stream).await.unwrap();
    let m = dlq.get_raw_message(1).await.expect("a dead-letter record");
    assert!(
        m.payload.len() < 16 * 1024,
        "record of {} bytes",
        m.payload.len()
    );
    let record: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(record["reason"], "too_large");
    assert_eq!(record["truncated"], true);
    assert!(record["payload_bytes"].as_u64().unwrap() > 700_000);
    stop.cancel();
    agg.await.unwrap().unwrap();
    env.cleanup().await;
}
