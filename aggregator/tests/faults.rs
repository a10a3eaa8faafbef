//! Fault injection over real servers: the aggregator binary is killed with SIGKILL again and
//! again, a second instance is paused past AckWait and resumed (a zombie), NATS and ClickHouse
//! are each killed and restarted, while agents publish events with re-sends inside and
//! outside JetStream's duplicate window and re-sends with a different payload. At the end the
//! committed usage per (customer, agent, meter, window) must equal an oracle computed from
//! the generator's manifest: nothing billed twice, nothing missing.
//!
//! Runs on servers of its own (`support`), never the shared stack. Size and seed:
//! `TALLY_FAULT_EVENTS` (default 20000; the reliability report uses 100000) and
//! `TALLY_FAULT_SEED` (default 1).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{Duration as ChronoDuration, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::{AggregatorProcess, ClickHouse, Nats};
use tally_domain::Window;
use tally_ingest::synthetic::Fleet;
use tally_ingest::OutgoingEvent;
use tally_platform::{migrate, store, streams, ClickHouseConfig, NatsConfig};

const WINDOW_SECS: u32 = 60;
const ACK_WAIT_SECS: u64 = 3;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (customer, agent, meter, window start in seconds) -> (quantity, events).
type Totals = BTreeMap<(String, String, String, i64), (u64, u64)>;

fn oracle(events: &[OutgoingEvent]) -> Totals {
    let mut t = Totals::new();
    for e in events {
        let window = Window::containing(e.time.timestamp_millis(), WINDOW_SECS).start_ms / 1000;
        let (meter, q) = match e.event_type.as_str() {
            "llm.tokens" => (
                "llm_tokens",
                e.data["tokens"].as_u64().expect("integer tokens"),
            ),
            _ => ("tool_calls", 1),
        };
        let entry = t
            .entry((
                e.customer.to_string(),
                e.agent.to_string(),
                meter.to_owned(),
                window,
            ))
            .or_default();
        entry.0 += q;
        entry.1 += 1;
    }
    t
}

fn config_text(nats: &NatsConfig, ch: &ClickHouseConfig) -> String {
    format!(
        r#"
[nats]
url = "{nats_url}"
duplicate_window_secs = {dup}

[clickhouse]
url = "{ch_url}"
database = "{db}"

[aggregator]
batch_max_events = 1000
batch_max_wait_ms = 100
window_secs = {WINDOW_SECS}
ack_wait_secs = {ACK_WAIT_SECS}
metrics_addr = "127.0.0.1:0"

[[meters]]
slug = "llm_tokens"
event_type = "llm.tokens"
aggregation = "SUM"
value_property = "$.tokens"
group_by = {{ model = "$.model", kind = "$.kind" }}

[[meters]]
slug = "tool_calls"
event_type = "tool.call"
aggregation = "COUNT"
group_by = {{ tool = "$.tool" }}
"#,
        nats_url = nats.url,
        dup = nats.duplicate_window_secs,
        ch_url = ch.url,
        db = ch.database,
    )
}

/// Publishes `events` in chunks; a chunk whose publishes or acks fail (NATS restarting) is
/// published again as a whole, with the same ids, until JetStream acknowledges all of it.
async fn publish_all(
    js: &jetstream::Context,
    prefix: &str,
    events: &[OutgoingEvent],
    per_sec: f64,
) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    for (i, chunk) in events.chunks(200).enumerate() {
        let due = started + Duration::from_secs_f64((i * 200) as f64 / per_sec);
        tokio::time::sleep_until(due.into()).await;
        loop {
            let mut acks = Vec::with_capacity(chunk.len());
            let mut failed = false;
            for e in chunk {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", e.id.as_str());
                let subject = format!("{prefix}.{}.{}", e.customer, e.agent);
                match js
                    .publish_with_headers(subject, headers, e.to_json().into())
                    .await
                {
                    Ok(ack) => acks.push(ack),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
                sent += 1;
            }
            for ack in acks {
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(5), ack).await,
                    Ok(Ok(_))
                ) {
                    failed = true;
                }
            }
            if !failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    sent
}

struct Chaos {
    binary: String,
    config: PathBuf,
    log: PathBuf,
    current: Option<AggregatorProcess>,
    kills: u32,
}

impl Chaos {
    fn start(&mut self) {
        self.current = Some(AggregatorProcess::start(
            &self.binary,
            &self.config,
            &self.log,
        ));
    }

    fn kill9_and_restart(&mut self) {
        if let Some(p) = self.current.take() {
            p.kill9();
            self.kills += 1;
        }
        self.start();
    }
}

async fn committed_totals(db: &clickhouse::Client) -> Totals {
    let rows: Vec<(String, String, String, u32, String, u64)> = db
        .query(
            "SELECT customer, agent, meter, toUInt32(window_start), toString(sum(quantity)), sum(event_count) \
             FROM v_usage GROUP BY customer, agent, meter, window_start",
        )
        .fetch_all()
        .await
        .expect("usage query");
    rows.into_iter()
        .map(|(c, a, m, w, q, n)| {
            let q: rust_decimal::Decimal = q.parse().expect("decimal");
            (
                (c, a, m, i64::from(w)),
                (u64::try_from(q.trunc().mantissa()).expect("integer"), n),
            )
        })
        .collect()
}

async fn wait_drained_or_panic(js: &jetstream::Context, stream: &str, what: &str) {
    assert!(
        streams::wait_drained(js, stream, "aggregator", Duration::from_secs(180)).await,
        "{what}: not drained in time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_restarts_and_zombies_neither_lose_nor_double_count() {
    let events_n: usize = env_or("TALLY_FAULT_EVENTS", 20_000);
    let seed: u64 = env_or("TALLY_FAULT_SEED", 1);
    let started = Instant::now();
    let mut nats = Nats::start();
    let mut ch = ClickHouse::start();
    let nats_cfg = NatsConfig {
        url: nats.url(),
        duplicate_window_secs: 2,
        ..NatsConfig::default()
    };
    let ch_cfg = ClickHouseConfig {
        url: ch.url(),
        database: "faults".into(),
        ..ClickHouseConfig::default()
    };
    migrate::apply(&ch_cfg).await.expect("migrations");
    let dir = std::env::temp_dir().join(format!("tally-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tally.toml");
    std::fs::write(&config, config_text(&nats_cfg, &ch_cfg)).unwrap();
    let client = async_nats::connect(&nats_cfg.url).await.unwrap();
    let js = jetstream::new(client);
    streams::ensure(&js, &nats_cfg).await.unwrap();

    // The manifest: unique events, event times spread over 30 minutes, sent shuffled.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fleet = Fleet::new("cust", 5, 4, &format!("f{seed}"), seed).unwrap();
    let now = Utc::now();
    let mut unique: Vec<OutgoingEvent> = (0..events_n)
        .map(|_| {
            fleet.next_event(now - ChronoDuration::milliseconds(rng.random_range(0..1_800_000)))
        })
        .collect();
    unique.shuffle(&mut rng);
    // Phase 1: the unique events with 10% re-sent right away (inside the duplicate window).
    let mut phase1 = Vec::with_capacity(events_n * 11 / 10);
    for (i, e) in unique.iter().enumerate() {
        phase1.push(e.clone());
        if rng.random_bool(0.1) {
            phase1.push(unique[rng.random_range(0..=i)].clone());
        }
    }
    // Phase 2, after the window: 7% same-payload re-sends, 3% re-sends with another payload.
    // Each id at most once in this phase: JetStream would drop a second publish of an id
    // inside its duplicate window before the aggregator ever saw it.
    let mut picks: Vec<usize> = (0..events_n).collect();
    picks.shuffle(&mut rng);
    let (resends, rest) = picks.split_at(events_n * 7 / 100);
    let mut phase2: Vec<OutgoingEvent> = resends.iter().map(|i| unique[*i].clone()).collect();
    let mut conflicting_ids = BTreeSet::new();
    for i in &rest[..events_n * 3 / 100] {
        let mut e = unique[*i].clone();
        e.data = serde_json::json!({"tokens": 999_999, "model": "forged", "kind": "output"});
        e.event_type = "llm.tokens".into();
        conflicting_ids.insert(e.id.to_string());
        phase2.push(e);
    }
    phase2.shuffle(&mut rng);

    let mut chaos = Chaos {
        binary: env!("CARGO_BIN_EXE_tally-aggregator").to_owned(),
        config: config.clone(),
        log: dir.join("aggregator.log"),
        current: None,
        kills: 0,
    };
    chaos.start();

    // Phase 1 over ~40 s, with kills every ~2 s, a zombie, a ClickHouse outage, a NATS restart.
    let per_sec = phase1.len() as f64 / 40.0;
    let publisher = {
        let js = js.clone();
        let prefix = nats_cfg.subject_prefix.clone();
        let events = phase1.clone();
        tokio::spawn(async move { publish_all(&js, &prefix, &events, per_sec).await })
    };
    let mut zombies = 0;
    let (mut outage_ack_pending_max, mut outage_rss_kib_max) = (0usize, 0u64);
    let mut restarts = Vec::new();
    for step in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1200..2800))).await;
        if step != 3 {
            chaos.kill9_and_restart(); // step 3 keeps the consuming instance for the outage
        }
        match step {
            2 => {
                // a second instance takes messages, is paused past AckWait, then resumes
                let zombie = AggregatorProcess::start(&chaos.binary, &config, &chaos.log);
                tokio::time::sleep(Duration::from_millis(700)).await;
                zombie.signal("STOP");
                tokio::time::sleep(Duration::from_secs(ACK_WAIT_SECS * 2 + 1)).await;
                zombie.signal("CONT");
                tokio::time::sleep(Duration::from_secs(2)).await;
                zombie.kill9();
                zombies += 1;
            }
            4 => {
                nats.restart();
                restarts.push("nats");
            }
            3 => {
                // ClickHouse down for 6 s while agents keep publishing: consumption stalls
                // with a bounded number of unacknowledged messages and bounded memory
                ch.stop();
                let mut consumer = js
                    .get_stream(&nats_cfg.stream)
                    .await
                    .unwrap()
                    .get_consumer::<jetstream::consumer::pull::Config>("aggregator")
                    .await
                    .unwrap();
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(info) = consumer.info().await {
                        outage_ack_pending_max = outage_ack_pending_max.max(info.num_ack_pending);
                    }
                    if let Some(rss) = chaos.current.as_ref().and_then(|p| p.rss_kib()) {
                        outage_rss_kib_max = outage_rss_kib_max.max(rss);
                    }
                }
                ch.start_again();
                restarts.push("clickhouse (6 s outage)");
            }
            _ => {}
        }
    }
    let sent1 = publisher.await.unwrap();
    wait_drained_or_panic(&js, &nats_cfg.stream, "phase 1").await;

    // Phase 2: re-sends after the duplicate window, with two more kills.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let publisher = {
        let js = js.clone();
        let prefix = nats_cfg.subject_prefix.clone();
        let events = phase2.clone();
        tokio::spawn(async move { publish_all(&js, &prefix, &events, 2000.0).await })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        chaos.kill9_and_restart();
    }
    let sent2 = publisher.await.unwrap();
    wait_drained_or_panic(&js, &nats_cfg.stream, "phase 2").await;
    let kills = chaos.kills;
    assert!(
        outage_ack_pending_max <= 2 * 1000,
        "unacknowledged messages bounded by max_ack_pending: {outage_ack_pending_max}"
    );
    assert!(
        outage_rss_kib_max < 512 * 1024,
        "aggregator memory bounded during the outage: {outage_rss_kib_max} KiB"
    );
    let last = chaos.current.take().expect("an aggregator runs");
    let status = last.terminate();
    assert!(
        status.success(),
        "SIGTERM: the aggregator flushes and exits cleanly, got {status:?}"
    );

    // Committed usage equals the oracle of the unique events, window by window.
    let db = store::connect(&ch_cfg);
    let want = oracle(&unique);
    let got = committed_totals(&db).await;
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "differences: {missing:?} extra: {extra:?}"
    );
    let billed: u64 = got.values().map(|v| v.1).sum();
    assert_eq!(
        billed, events_n as u64,
        "each unique event billed exactly once"
    );

    // Every conflicting re-send was reported with its reason; none was billed (checked above).
    let mut dlq = js.get_stream(&nats_cfg.dlq_stream).await.unwrap();
    let last_seq = dlq.info().await.unwrap().state.last_sequence;
    let mut reported = BTreeSet::new();
    for seq in 1..=last_seq {
        let Ok(m) = dlq.get_raw_message(seq).await else {
            continue;
        };
        let r: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(r["reason"], "conflicting_duplicate", "{r}");
        let original: serde_json::Value =
            serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
        reported.insert(original["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        reported, conflicting_ids,
        "every conflicting duplicate reported"
    );

    // How much the faults made the pipeline repeat itself: committed reading rows beyond one
    // per (event, meter), absorbed by the views' identity.
    let (rows, distinct): (u64, u64) = db
        .query(
            "SELECT count(), uniqExact(customer, event_id, meter) FROM usage_readings \
             WHERE batch_id IN (SELECT batch_id FROM usage_batches)",
        )
        .fetch_one()
        .await
        .unwrap();
    let injected = (phase1.len() - events_n) + phase2.len();
    println!(
        "fault report: seed {seed}; events sent {}, unique {events_n}, billed {billed}; duplicates injected {injected} \
         ({} conflicting), billed twice 0, missing 0; faults: {kills} kill -9, {zombies} zombie pause past AckWait, \
         restarts {restarts:?} (during the outage: at most {outage_ack_pending_max} unacknowledged, RSS at most {outage_rss_kib_max} KiB); \
         committed reading rows {rows} for {distinct} distinct; {:.0}s",
        sent1 + sent2,
        conflicting_ids.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
