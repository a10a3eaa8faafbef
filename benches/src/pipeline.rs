//! End to end over the local stack: events published to JetStream, consumed by the aggregator
//! (in process) and committed to ClickHouse, against a baseline measured in the same run:
//! raw JetStream publish and consume (with acks) of the same messages, no processing.
//!
//! - throughput: events committed per second (publish as fast as allowed, time until every
//!   message is acknowledged after its commit) against baseline messages consumed per second;
//! - latency: at a fixed fraction of the measured throughput, event publish to visible in the
//!   public view `v_usage` (polled every 25 ms; the poll interval bounds the resolution).
//!
//! Each run uses its own streams and database (`TestEnv`) and removes them afterwards.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use chrono::Utc;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tally_aggregator::AggregatorConfig;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_ingest::synthetic::Fleet;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_platform::{streams, NatsConfig};

/// Publishes in flight at most.
const IN_FLIGHT: usize = 2048;

/// One message: subject, id and body.
pub type Message = (String, String, Vec<u8>);

/// The benchmark's events: `n` messages of about 300 bytes from 10 customers with 10 agents
/// each, `duplicate_share` of them re-sending an earlier id.
pub fn messages(prefix: &str, n: usize, duplicate_share: f64) -> Vec<Message> {
    let mut fleet = Fleet::new(
        "customer",
        10,
        10,
        &format!("bench{}", Utc::now().timestamp_millis()),
        1,
    )
    .expect("fleet");
    let mut out: Vec<Message> = Vec::with_capacity(n);
    while out.len() < n {
        if !out.is_empty() && fleet.chance(duplicate_share) {
            let again = out[fleet.pick(out.len())].clone();
            out.push(again);
            continue;
        }
        let mut e = fleet.next_event(Utc::now());
        e.data["trace"] = serde_json::Value::String("x".repeat(60)); // ~300-byte events
        out.push((
            format!("{prefix}.{}.{}", e.customer, e.agent),
            e.id.to_string(),
            e.to_json(),
        ));
    }
    out
}

/// The AI-agent meters of `config/tally.toml`: tokens by model and kind, tool calls by tool.
pub fn meters() -> Vec<tally_domain::Meter> {
    let specs: Vec<MeterSpec> = serde_json::from_value(serde_json::json!([
        {"slug": "llm_tokens", "event_type": "llm.tokens", "aggregation": "SUM",
         "value_property": "$.tokens", "group_by": {"model": "$.model", "kind": "$.kind"}},
        {"slug": "tool_calls", "event_type": "tool.call", "aggregation": "COUNT", "group_by": {"tool": "$.tool"}}
    ]))
    .expect("meter specs");
    validate_meters(specs).expect("meters")
}

/// Publishes `msgs` with `Nats-Msg-Id`, at most [`IN_FLIGHT`] unacknowledged, optionally
/// paced to `per_sec`; returns each message's publish instant.
async fn publish(
    js: &jetstream::Context,
    msgs: &[Message],
    per_sec: Option<f64>,
) -> anyhow::Result<Vec<Instant>> {
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(msgs.len());
    let mut acks = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for (i, (subject, id, body)) in msgs.iter().enumerate() {
        if let Some(rate) = per_sec {
            tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into())
                .await;
        }
        if acks.len() >= IN_FLIGHT {
            let ack: jetstream::context::PublishAckFuture = acks.pop_front().expect("non-empty");
            ack.await?;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        sent_at.push(Instant::now());
        acks.push_back(
            js.publish_with_headers(subject.clone(), headers, body.clone().into())
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    Ok(sent_at)
}

/// Baseline: raw publish of `msgs` and a concurrent pull consumer acking each message.
/// Returns messages per second (first publish to last ack).
pub async fn baseline(env: &TestEnv, msgs: &[Message]) -> anyhow::Result<f64> {
    let client = async_nats::connect(&env.nats.url).await?;
    let js = jetstream::new(client);
    let cfg = NatsConfig {
        stream: format!("{}_RAW", env.nats.stream),
        subject_prefix: format!("{}_raw", env.nats.subject_prefix),
        dlq_stream: format!("{}_RAWDLQ", env.nats.stream),
        dlq_subject_prefix: format!("{}_rawdlq", env.nats.subject_prefix),
        ..env.nats.clone()
    };
    let stream = streams::ensure(&js, &cfg).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let raw: Vec<Message> = msgs
        .iter()
        .map(|(s, id, b)| {
            (
                s.replacen(&env.nats.subject_prefix, &cfg.subject_prefix, 1),
                id.clone(),
                b.clone(),
            )
        })
        .collect();
    let expected = raw_len_unique(&raw);
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(5000)
            .messages()
            .await?;
        let mut seen = 0usize;
        while seen < expected {
            match messages.next().await {
                Some(Ok(m)) => {
                    m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    seen += 1;
                }
                Some(Err(e)) => return Err(anyhow::anyhow!("{e}")),
                None => break,
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    publish(&js, &raw, None).await?;
    reader.await??;
    let rate = expected as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream(&cfg.stream).await;
    let _ = js.delete_stream(&cfg.dlq_stream).await;
    Ok(rate)
}

/// Messages JetStream stores: one per distinct id (re-sends inside its window are dropped).
fn raw_len_unique(msgs: &[Message]) -> usize {
    msgs.iter()
        .map(|m| m.1.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

fn aggregator_config() -> AggregatorConfig {
    AggregatorConfig {
        batch_max_events: 5000,
        batch_max_wait_ms: 100,
        ..AggregatorConfig::default()
    }
}

/// Ours: the same messages through the aggregator; events committed per second.
pub async fn throughput(env: &TestEnv, msgs: &[Message]) -> anyhow::Result<f64> {
    let client = async_nats::connect(&env.nats.url).await?;
    let js = jetstream::new(client.clone());
    streams::ensure(&js, &env.nats).await?;
    let stop = Shutdown::new();
    let (db, nats_cfg, stop2) = (env.db(), env.nats.clone(), stop.clone());
    let agg = tokio::spawn(async move {
        tally_aggregator::run(client, db, &nats_cfg, &aggregator_config(), meters(), stop2).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // consumer up
    let started = Instant::now();
    publish(&js, msgs, None).await?;
    anyhow::ensure!(
        streams::wait_drained(
            &js,
            &env.nats.stream,
            "aggregator",
            Duration::from_secs(600)
        )
        .await,
        "not drained"
    );
    let rate = raw_len_unique(msgs) as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    agg.await??;
    Ok(rate)
}

/// Latency percentiles (p50, p99, p99.9) in milliseconds, publishing at `per_sec`.
pub async fn latency(
    env: &TestEnv,
    msgs: &[Message],
    per_sec: f64,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let client = async_nats::connect(&env.nats.url).await?;
    let js = jetstream::new(client.clone());
    streams::ensure(&js, &env.nats).await?;
    let stop = Shutdown::new();
    let (db, nats_cfg, stop2) = (env.db(), env.nats.clone(), stop.clone());
    let agg = tokio::spawn(async move {
        tally_aggregator::run(client, db, &nats_cfg, &aggregator_config(), meters(), stop2).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = env.db();
    let before: u64 = db
        .query("SELECT sum(event_count) FROM v_usage")
        .fetch_one()
        .await?;
    let publisher = {
        let js = js.clone();
        let msgs = msgs.to_vec();
        tokio::spawn(async move { publish(&js, &msgs, Some(per_sec)).await })
    };
    let total = msgs.len() as u64;
    let mut visible_at: Vec<(u64, Instant)> = Vec::new();
    let deadline =
        Instant::now() + Duration::from_secs(msgs.len() as u64 / per_sec.max(1.0) as u64 + 120);
    loop {
        let n: u64 = db
            .query("SELECT sum(event_count) FROM v_usage")
            .fetch_one()
            .await?;
        visible_at.push((n - before, Instant::now()));
        if n - before >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let sent_at = publisher.await??;
    let mut hist = Histogram::<u64>::new(3)?;
    let mut j = 0;
    for (i, sent) in sent_at.iter().enumerate() {
        while j < visible_at.len() && visible_at[j].0 <= i as u64 {
            j += 1;
        }
        if let Some((_, at)) = visible_at.get(j) {
            hist.record(at.saturating_duration_since(*sent).as_micros() as u64)?;
        }
    }
    stop.cancel();
    agg.await??;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok((ms(0.5), ms(0.99), ms(0.999), hist.len()))
}
