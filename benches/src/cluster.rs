//! The end-to-end benchmark on the cluster profile (`scripts/cluster.sh`): three JetStream
//! nodes with R3 streams and two ClickHouse 18.16 replicas written with `insert_quorum = 2`
//! and read with `select_sequential_consistency = 1`, against a baseline measured in the same
//! run on the same cluster: raw JetStream R3 publish and consume (with acks).
//!
//! The scenarios are [`crate::pipeline`]'s, run with the cluster's settings: throughput
//! (events committed per second against raw messages consumed per second) and latency
//! (publish to visible in `v_usage` at half our throughput, against publish to received on
//! the raw R3 stream). Each run migrates its own database ON CLUSTER and drops it afterwards.
//! The cluster comes from `TALLY_TEST_CLUSTER_NATS_URLS` / `TALLY_TEST_CLUSTER_CLICKHOUSE_URLS`
//! (`eval "$(scripts/cluster.sh env)"`); one aggregator, no partitions (the subject prefix of
//! a run is its own, outside the cluster's mapping).

use anyhow::Context;
use tally_platform::testkit::TestEnv;
use tally_platform::{migrate, store, ClickHouseConfig, NatsConfig};

use crate::pipeline::{self, Latency, Run};

/// What one cluster run measured.
pub struct Figures {
    pub events: usize,
    pub event_bytes: usize,
    pub raw: Run,
    pub ours: Run,
    pub latency_rate: f64,
    pub raw_latency: Latency,
    pub latency: Latency,
}

/// A fresh database on the cluster and streams of its own, R3.
async fn cluster_env(tag: &str) -> anyhow::Result<TestEnv> {
    let list = |var: &str| -> anyhow::Result<Vec<String>> {
        Ok(std::env::var(var)
            .with_context(|| format!("{var}: run eval \"$(scripts/cluster.sh env)\" first"))?
            .split(',')
            .map(str::to_owned)
            .collect())
    };
    let (nats, clickhouse) = (
        list("TALLY_TEST_CLUSTER_NATS_URLS")?,
        list("TALLY_TEST_CLUSTER_CLICKHOUSE_URLS")?,
    );
    let unique = format!(
        "{tag}_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let env = TestEnv {
        nats: NatsConfig {
            // the benchmark's clients connect to one URL; the node fails over inside the cluster
            url: nats[0].clone(),
            stream: format!("B_{unique}"),
            subject_prefix: format!("b_{unique}"),
            dlq_stream: format!("B_{unique}_DLQ"),
            dlq_subject_prefix: format!("b_{unique}_dlq"),
            replicas: 3,
            ..NatsConfig::default()
        },
        clickhouse: ClickHouseConfig {
            url: clickhouse[0].clone(),
            database: format!("bench_{unique}"),
            cluster: Some("tally".into()),
            insert_quorum: u32::try_from(clickhouse.len())?,
            ..ClickHouseConfig::default()
        },
    };
    migrate::apply(&env.clickhouse).await?;
    Ok(env)
}

async fn drop_env(env: TestEnv) {
    let sql = format!(
        "DROP DATABASE IF EXISTS {} ON CLUSTER tally",
        env.clickhouse.database
    );
    let _ = store::server(&env.clickhouse).query(&sql).execute().await;
    if let Ok(client) = async_nats::connect(&env.nats.url).await {
        let js = async_nats::jetstream::new(client);
        let feed = tally_platform::feed::FeedConfig::for_nats(&env.nats);
        for s in [&env.nats.stream, &env.nats.dlq_stream, &feed.stream] {
            let _ = js.delete_stream(s).await;
        }
        let _ = js
            .delete_stream(format!("KV_{}_AGGREGATORS", env.nats.stream))
            .await;
    }
}

/// Throughput with `events` messages (`duplicate_share` re-sent), then latency with
/// `latency_events` at half of our throughput; each next to its raw R3 baseline.
pub async fn run(
    events: usize,
    duplicate_share: f64,
    latency_events: usize,
) -> anyhow::Result<Figures> {
    let env = cluster_env("cl_e2e").await?;
    let msgs = pipeline::messages(&env.nats.subject_prefix, events, duplicate_share);
    let event_bytes = msgs.iter().map(|m| m.2.len()).sum::<usize>() / msgs.len().max(1);
    let raw = pipeline::baseline(&env, &msgs).await;
    let ours = match &raw {
        Ok(_) => pipeline::throughput(&env, &msgs).await.map(Some),
        Err(_) => Ok(None),
    };
    drop_env(env).await;
    let (raw, ours) = (raw?, ours?.context("ours did not run")?);
    let latency_rate = (ours.per_sec / 2.0).max(1.0);
    let env = cluster_env("cl_latency").await?;
    let probe = pipeline::messages(&env.nats.subject_prefix, latency_events, 0.0);
    let raw_latency = pipeline::raw_latency(&env, &probe, latency_rate).await;
    let latency = match &raw_latency {
        Ok(_) => pipeline::latency(&env, &probe, latency_rate).await,
        Err(_) => Err(anyhow::anyhow!("skipped: the raw baseline failed")),
    };
    drop_env(env).await;
    Ok(Figures {
        events,
        event_bytes,
        raw,
        ours,
        latency_rate,
        raw_latency: raw_latency?,
        latency: latency?,
    })
}

impl Figures {
    /// The markdown table of docs/BENCHMARKS.md's cluster section.
    pub fn to_markdown(&self) -> String {
        let (base, ours) = (self.raw.per_sec, self.ours.per_sec);
        let (r, l) = (&self.raw_latency, &self.latency);
        format!(
            "| scenario | baseline (raw JetStream R3) | ours (R3 + ClickHouse quorum 2 of 2) | ratio |\n\
             |---|---|---|---|\n\
             | throughput, {} events of {} bytes | publish + consume: {base:.0} msg/s | committed: {ours:.0} events/s | {:.2} |\n\
             | latency at {:.0} events/s, {} events | publish -> received: p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms | publish -> visible in v_usage: p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms | p99 {:.1}x |\n",
            self.events,
            self.event_bytes,
            ours / base,
            self.latency_rate,
            l.samples,
            r.p50,
            r.p99,
            r.p999,
            l.p50,
            l.p99,
            l.p999,
            l.p99 / r.p99.max(0.001),
        )
    }
}
