//! The aggregator against the real servers: rejections reach the dead-letter stream with
//! their reason and never count; a batch committed just before a crash is not counted again
//! when its unacknowledged messages are redelivered to a fresh aggregator.

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tally_aggregator::batch::Batch;
use tally_aggregator::classify::Classifier;
use tally_aggregator::sink;
use tally_e2e::{aggregator_config, meters, start_aggregator, wait_drained};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;

fn event(id: &str, customer: &str, agent: &str, ty: &str, time: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"{agent}","subject":"{customer}","type":"{ty}","time":"{time}","data":{data}}}"#
    )
}

async fn publish_raw(js: &async_nats::jetstream::Context, subject: String, id: &str, body: String) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
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
    let env = TestEnv::new("agg_dead_letters").await;
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
    // the same id again with another payload, after the first one is committed
    publish_raw(
        &js,
        format!("{p}.acme.bot"),
        "good-again",
        event("good", "acme", "bot", "llm.tokens", &now, &tokens("99")),
    )
    .await;
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
    // An aggregator classified and committed the first 120 events, then died before acking.
    let cfg = aggregator_config();
    let classifier = Classifier::new(meters(), &p, &cfg);
    let mut batch = Batch::default();
    for (i, (_, body)) in bodies.iter().take(120).enumerate() {
        let acc = classifier
            .classify(
                &format!("{p}.acme.bot"),
                body.as_bytes(),
                Utc::now().timestamp_millis(),
            )
            .unwrap();
        batch.add_accepted(acc, i as u64 + 1, cfg.window_secs);
    }
    sink::commit(
        &env.db(),
        &batch,
        classifier.meters(),
        "crashed-batch",
        "aggregator",
        cfg.window_secs,
        Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    // Rows of a batch without its marker (a crash between the inserts and the marker) never count.
    let mut orphan = Batch::default();
    let acc = classifier
        .classify(
            &format!("{p}.acme.bot"),
            bodies[150].1.as_bytes(),
            Utc::now().timestamp_millis(),
        )
        .unwrap();
    orphan.add_accepted(acc, 151, cfg.window_secs);
    sink::commit(
        &env.db(),
        &orphan,
        classifier.meters(),
        "orphan-batch",
        "aggregator",
        cfg.window_secs,
        Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    env.db()
        .query("ALTER TABLE usage_batches DELETE WHERE batch_id = 'orphan-batch'")
        .execute()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(usage_total(&env).await.1, 120);

    // A fresh aggregator gets all 200 messages redelivered (none was acked).
    let stop = Shutdown::new();
    let agg = start_aggregator(&env, cfg, stop.clone()).await;
    wait_drained(&env, "aggregator", Duration::from_secs(30)).await;
    let want: u64 = (1..=200).sum();
    assert_eq!(
        usage_total(&env).await,
        (want.to_string(), 200),
        "every event exactly once"
    );
    stop.cancel();
    agg.await.unwrap().unwrap();
    env.cleanup().await;
}
