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

use crate::cputime::ProcessCpu;
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use chrono::Utc;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tally_aggregator::AggregatorConfig;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_ingest::publisher;
use tally_ingest::synthetic::Fleet;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_platform::{streams, NatsConfig};

/// Publishes in flight at most.
const IN_FLIGHT: usize = 2048;

/// One message: subject, `Nats-Msg-Id` (the event's identity) and body.
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
            tally_domain::nats_msg_id(e.customer.as_ref(), e.agent.as_ref(), e.id.as_ref()),
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
/// paced to `per_sec`; returns each message's publish instant. A re-sent id JetStream answers
/// "in process" (an R3 stream still storing its original) is sent again until answered, as
/// every usage publisher does (`tally_ingest::publisher::settle`).
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
            let (message, ack) = acks.pop_front().expect("non-empty");
            settle(js, &message, ack).await?;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let message = publisher::Message {
            subject: subject.clone().into(),
            headers,
            payload: body.clone().into(),
        };
        sent_at.push(Instant::now());
        let ack = message.send(js).await?;
        acks.push_back((message, ack));
    }
    for (message, ack) in acks {
        settle(js, &message, ack).await?;
    }
    Ok(sent_at)
}

/// `message`'s ack, sent again while JetStream has its id "in process".
async fn settle(
    js: &jetstream::Context,
    message: &publisher::Message,
    ack: jetstream::context::PublishAckFuture,
) -> anyhow::Result<()> {
    publisher::settle(js, message, ack).await.answer?;
    Ok(())
}

/// A raw stream of the run (own names, next to the pipeline's) with a pull consumer that
/// acks explicitly, and `msgs` re-addressed to it.
async fn raw_stream(
    env: &TestEnv,
    msgs: &[Message],
) -> anyhow::Result<(jetstream::Context, NatsConfig, pull::Stream, Vec<Message>)> {
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
    let messages = consumer
        .stream()
        .max_messages_per_batch(5000)
        .messages()
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
    Ok((js, cfg, messages, raw))
}

async fn drop_raw_stream(js: &jetstream::Context, cfg: &NatsConfig) {
    let _ = js.delete_stream(&cfg.stream).await;
    let _ = js.delete_stream(&cfg.dlq_stream).await;
}

/// Reads `expected` messages, acking each; returns each one's `Nats-Msg-Id` index in `ids`
/// with the instant it arrived.
async fn read_raw(
    mut messages: pull::Stream,
    expected: usize,
    ids: std::collections::HashMap<String, usize>,
) -> anyhow::Result<Vec<(usize, Instant)>> {
    let mut arrived = Vec::with_capacity(expected);
    while arrived.len() < expected {
        match messages.next().await {
            Some(Ok(m)) => {
                let at = Instant::now();
                let index = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .and_then(|id| ids.get(id.as_str()).copied())
                    .unwrap_or(usize::MAX);
                m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                arrived.push((index, at));
            }
            Some(Err(e)) => return Err(anyhow::anyhow!("{e}")),
            None => break,
        }
    }
    Ok(arrived)
}

/// Each distinct id's first index in `msgs`.
fn first_index(msgs: &[Message]) -> std::collections::HashMap<String, usize> {
    let mut ids = std::collections::HashMap::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        ids.entry(m.1.clone()).or_insert(i);
    }
    ids
}

/// One throughput run: its rate and where its CPU went.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Messages (baseline) or committed events (ours) per second.
    pub per_sec: f64,
    /// Distinct events the run carried.
    pub events: usize,
    /// CPU seconds of NATS, ClickHouse and this process during the run.
    pub cpu: ProcessCpu,
}

impl Run {
    /// CPU microseconds per event of one process's figure.
    pub fn micros_per_event(&self, seconds: Option<f64>) -> Option<f64> {
        Some(seconds? * 1e6 / self.events.max(1) as f64)
    }
}

/// Baseline: raw publish of `msgs` and a concurrent pull consumer acking each message.
/// Messages per second from the first publish to the last ack.
pub async fn baseline(env: &TestEnv, msgs: &[Message]) -> anyhow::Result<Run> {
    let (js, cfg, messages, raw) = raw_stream(env, msgs).await?;
    let expected = raw_len_unique(&raw);
    let cpu = ProcessCpu::sample();
    let started = Instant::now();
    let reader = tokio::spawn(read_raw(messages, expected, Default::default()));
    publish(&js, &raw, None).await?;
    reader.await??;
    let per_sec = expected as f64 / started.elapsed().as_secs_f64();
    let cpu = ProcessCpu::sample().since(&cpu);
    drop_raw_stream(&js, &cfg).await;
    Ok(Run {
        per_sec,
        events: expected,
        cpu,
    })
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub samples: u64,
}

impl Latency {
    fn of(hist: &Histogram<u64>) -> Latency {
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: hist.max() as f64 / 1000.0,
            samples: hist.len(),
        }
    }
}

/// Baseline latency: `msgs` published at `per_sec` into a raw stream, publish until a pull
/// consumer receives it (acking each), no processing.
pub async fn raw_latency(env: &TestEnv, msgs: &[Message], per_sec: f64) -> anyhow::Result<Latency> {
    let (js, cfg, messages, raw) = raw_stream(env, msgs).await?;
    let ids = first_index(&raw);
    let reader = tokio::spawn(read_raw(messages, ids.len(), ids));
    let sent_at = publish(&js, &raw, Some(per_sec)).await?;
    let arrived = reader.await??;
    drop_raw_stream(&js, &cfg).await;
    let mut hist = Histogram::<u64>::new(3)?;
    for (index, at) in arrived {
        if let Some(sent) = sent_at.get(index) {
            hist.record(at.saturating_duration_since(*sent).as_micros() as u64)?;
        }
    }
    Ok(Latency::of(&hist))
}

/// Messages JetStream stores: one per distinct id (re-sends inside its window are dropped).
fn raw_len_unique(msgs: &[Message]) -> usize {
    msgs.iter()
        .map(|m| m.1.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// The aggregator's settings in these runs: the shipped defaults of `batch_max_events` and
/// `batch_max_wait_ms`, unless `TALLY_BENCH_BATCH` or `TALLY_BENCH_WAIT_MS` say otherwise (to
/// compare batch sizes in one build).
fn aggregator_config() -> anyhow::Result<AggregatorConfig> {
    let defaults = AggregatorConfig::default();
    Ok(AggregatorConfig {
        batch_max_events: env_or("TALLY_BENCH_BATCH", defaults.batch_max_events)?,
        batch_max_wait_ms: env_or("TALLY_BENCH_WAIT_MS", defaults.batch_max_wait_ms)?,
        ..defaults
    })
}

/// The variable `name` parsed, `default` when unset; a value that does not parse is an error
/// naming the variable (never silently the default).
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Ours: the same messages through the aggregator; events committed per second.
pub async fn throughput(env: &TestEnv, msgs: &[Message]) -> anyhow::Result<Run> {
    let client = async_nats::connect(&env.nats.url).await?;
    let js = jetstream::new(client.clone());
    streams::ensure(&js, &env.nats).await?;
    let stop = Shutdown::new();
    let (db, nats_cfg, stop2) = (env.db(), env.nats.clone(), stop.clone());
    let cfg = aggregator_config()?;
    let agg = tokio::spawn(async move {
        tally_aggregator::run(client, db, &nats_cfg, &cfg, meters(), stop2).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // consumer up
    let cpu = ProcessCpu::sample();
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
    let events = raw_len_unique(msgs);
    let per_sec = events as f64 / started.elapsed().as_secs_f64();
    let cpu = ProcessCpu::sample().since(&cpu);
    stop.cancel();
    agg.await??;
    Ok(Run {
        per_sec,
        events,
        cpu,
    })
}

/// Publish to visible in `v_usage`, publishing at `per_sec`.
pub async fn latency(env: &TestEnv, msgs: &[Message], per_sec: f64) -> anyhow::Result<Latency> {
    let client = async_nats::connect(&env.nats.url).await?;
    let js = jetstream::new(client.clone());
    streams::ensure(&js, &env.nats).await?;
    let stop = Shutdown::new();
    let (db, nats_cfg, stop2) = (env.db(), env.nats.clone(), stop.clone());
    let cfg = aggregator_config()?;
    let agg = tokio::spawn(async move {
        tally_aggregator::run(client, db, &nats_cfg, &cfg, meters(), stop2).await
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
    Ok(Latency::of(&hist))
}
