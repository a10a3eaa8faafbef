//! Fault injection over real servers: the aggregator binary is killed with SIGKILL again and
//! again, a second instance is paused past AckWait and resumed (a zombie), NATS and ClickHouse
//! are each killed and restarted, while agents publish events with re-sends inside and
//! outside JetStream's duplicate window and re-sends with a different payload. At the end the
//! committed usage per (customer, agent, meter, window, group) of meters of all six
//! aggregations (SUM, COUNT, MIN, MAX, UNIQUE_COUNT, LATEST) must equal an oracle computed
//! from the generator's manifest, and every accepted (event, meter) reading must be counted
//! exactly once: nothing billed twice, nothing missing.
//!
//! Runs on servers of its own (`support`), never the shared stack. Size and seed:
//! `TALLY_FAULT_EVENTS` (default 20000; the reliability report uses 100000) and
//! `TALLY_FAULT_SEED` (default 1).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::Value;
use support::{AggregatorProcess, ClickHouse, Nats};
use tally_ingest::synthetic::Fleet;
use tally_ingest::OutgoingEvent;
use tally_platform::{migrate, store, streams, ClickHouseConfig, NatsConfig};

const WINDOW_SECS: u32 = 60;
const ACK_WAIT_SECS: u64 = 3;
/// JetStream's duplicate window of the test's stream: re-sends published within it are
/// dropped by the server, later ones reach the aggregator.
const DUPLICATE_WINDOW_SECS: u64 = 2;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A meter of the test's configuration; the oracle reads events by the same declaration
/// with its own code (paths are relative to `data`, dot-separated).
struct MeterDecl {
    slug: &'static str,
    event_type: &'static str,
    aggregation: &'static str,
    value: Option<&'static str>,
    group_by: &'static [(&'static str, &'static str)],
}

const METERS: &[MeterDecl] = &[
    MeterDecl {
        slug: "llm_tokens",
        event_type: "llm.tokens",
        aggregation: "SUM",
        value: Some("tokens"),
        group_by: &[("model", "model"), ("kind", "kind")],
    },
    MeterDecl {
        slug: "tool_calls",
        event_type: "tool.call",
        aggregation: "COUNT",
        value: None,
        group_by: &[("tool", "tool")],
    },
    MeterDecl {
        slug: "context_size",
        event_type: "llm.tokens",
        aggregation: "LATEST",
        value: Some("context.size"),
        group_by: &[("model", "model")],
    },
    MeterDecl {
        slug: "tools_used",
        event_type: "tool.call",
        aggregation: "UNIQUE_COUNT",
        value: Some("tool"),
        group_by: &[],
    },
    MeterDecl {
        slug: "tool_targets",
        event_type: "tool.call",
        aggregation: "UNIQUE_COUNT",
        value: Some("target"),
        group_by: &[("tool", "tool")],
    },
    MeterDecl {
        slug: "run_seconds_max",
        event_type: "agent.run",
        aggregation: "MAX",
        value: Some("seconds"),
        group_by: &[("outcome", "outcome")],
    },
    MeterDecl {
        slug: "run_seconds_min",
        event_type: "agent.run",
        aggregation: "MIN",
        value: Some("seconds"),
        group_by: &[("outcome", "outcome")],
    },
];

/// (customer, agent, meter, window start in seconds, group as `name=value,...` by name).
type Key = (String, String, String, i64, String);
/// Key -> (quantity, events).
type Usage = BTreeMap<Key, (Decimal, u64)>;

fn group_text<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let sorted: BTreeMap<&str, &str> = pairs.into_iter().collect();
    sorted
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn field<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(data, |v, k| v.get(k))
}

fn text(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn decimal(v: Option<&Value>) -> Decimal {
    let t = text(v);
    Decimal::from_str(&t).unwrap_or_else(|_| panic!("a decimal quantity, got {t:?}"))
}

/// One (customer, agent, meter, window, group)'s readings, folded.
#[derive(Default)]
struct Acc {
    sum: Decimal,
    count: u64,
    min: Option<Decimal>,
    max: Option<Decimal>,
    uniques: BTreeSet<String>,
    /// (time_ms, event id) of the latest reading and its value: the view's
    /// `argMax(value, (time_ms, event_id))`, ties on time broken by the greater id.
    latest: Option<((i64, String), Decimal)>,
}

fn oracle(events: &[OutgoingEvent]) -> Usage {
    let mut accs: BTreeMap<Key, (&str, Acc)> = BTreeMap::new();
    let size_ms = i64::from(WINDOW_SECS) * 1000;
    for e in events {
        let time_ms = e.time.timestamp_millis();
        let window = time_ms.div_euclid(size_ms) * i64::from(WINDOW_SECS);
        for m in METERS.iter().filter(|m| m.event_type == e.event_type) {
            let values: Vec<(&str, String)> = m
                .group_by
                .iter()
                .map(|(n, p)| (*n, text(field(&e.data, p))))
                .collect();
            let group = group_text(values.iter().map(|(n, v)| (*n, v.as_str())));
            let key = (
                e.customer.to_string(),
                e.agent.to_string(),
                m.slug.to_owned(),
                window,
                group,
            );
            let (_, acc) = accs.entry(key).or_insert((m.aggregation, Acc::default()));
            acc.count += 1;
            let Some(path) = m.value else { continue };
            let raw = field(&e.data, path);
            if m.aggregation == "UNIQUE_COUNT" {
                acc.uniques.insert(text(raw));
                continue;
            }
            let v = decimal(raw);
            acc.sum += v;
            acc.min = Some(acc.min.map_or(v, |x| x.min(v)));
            acc.max = Some(acc.max.map_or(v, |x| x.max(v)));
            let at = (time_ms, e.id.to_string());
            if acc.latest.as_ref().is_none_or(|(t, _)| at > *t) {
                acc.latest = Some((at, v));
            }
        }
    }
    accs.into_iter()
        .map(|(k, (aggregation, a))| {
            let q = match aggregation {
                "SUM" => a.sum,
                "COUNT" => Decimal::from(a.count),
                "MIN" => a.min.expect("a value"),
                "MAX" => a.max.expect("a value"),
                "UNIQUE_COUNT" => Decimal::from(a.uniques.len()),
                "LATEST" => a.latest.expect("a value").1,
                other => panic!("aggregation {other}"),
            };
            (k, (q.normalize(), a.count))
        })
        .collect()
}

/// The (customer, event id, meter) readings the manifest's events must produce.
fn expected_readings(events: &[OutgoingEvent]) -> BTreeSet<(String, String, String)> {
    events
        .iter()
        .flat_map(|e| {
            METERS
                .iter()
                .filter(|m| m.event_type == e.event_type)
                .map(|m| (e.customer.to_string(), e.id.to_string(), m.slug.to_owned()))
        })
        .collect()
}

fn config_text(nats: &NatsConfig, ch: &ClickHouseConfig) -> String {
    let mut text = format!(
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
lease_secs = 1
metrics_addr = "127.0.0.1:0"
"#,
        nats_url = nats.url,
        dup = nats.duplicate_window_secs,
        ch_url = ch.url,
        db = ch.database,
    );
    for m in METERS {
        text += &format!(
            "\n[[meters]]\nslug = \"{}\"\nevent_type = \"{}\"\naggregation = \"{}\"\n",
            m.slug, m.event_type, m.aggregation
        );
        if let Some(v) = m.value {
            text += &format!("value_property = \"$.{v}\"\n");
        }
        let groups: Vec<String> = m
            .group_by
            .iter()
            .map(|(n, p)| format!("{n} = \"$.{p}\""))
            .collect();
        text += &format!("group_by = {{ {} }}\n", groups.join(", "));
    }
    text
}

/// What publishing a list of messages did.
struct Published {
    /// Publish calls made, retries of failed chunks included.
    calls: u64,
    /// Chunks published again after a publish or an ack failed or timed out.
    retries: u64,
    /// Per message, whether the acknowledgement that settled it said `duplicate`: JetStream
    /// dropped it because its id was stored within the duplicate window.
    duplicate: Vec<bool>,
}

/// A JetStream context on a connection of its own, retried until the server answers.
async fn connect_js(url: &str) -> jetstream::Context {
    loop {
        if let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url)).await
        {
            return jetstream::new(client);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes `events` in chunks; a chunk whose publishes or acks fail or take more than 5 s
/// (NATS restarting) is published again as a whole, with the same ids, on a new connection,
/// until JetStream acknowledges all of it. (Once, a publisher reusing its connection after the
/// NATS restart waited forever inside `publish` with nothing sent.)
async fn publish_all(url: &str, prefix: &str, events: &[OutgoingEvent], per_sec: f64) -> Published {
    const WAIT: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let mut js = connect_js(url).await;
    let mut out = Published {
        calls: 0,
        retries: 0,
        duplicate: Vec::with_capacity(events.len()),
    };
    for (i, chunk) in events.chunks(200).enumerate() {
        let due = started + Duration::from_secs_f64((i * 200) as f64 / per_sec);
        tokio::time::sleep_until(due.into()).await;
        loop {
            let mut acks = Vec::with_capacity(chunk.len());
            let mut failed = false;
            for e in chunk {
                let mut headers = async_nats::HeaderMap::new();
                let msg_id =
                    tally_domain::nats_msg_id(e.customer.as_ref(), e.agent.as_ref(), e.id.as_ref());
                headers.insert("Nats-Msg-Id", msg_id.as_str());
                let subject = format!("{prefix}.{}.{}", e.customer, e.agent);
                let publish = js.publish_with_headers(subject, headers, e.to_json().into());
                out.calls += 1;
                match tokio::time::timeout(WAIT, publish).await {
                    Ok(Ok(ack)) => acks.push(ack),
                    _ => {
                        failed = true;
                        break;
                    }
                }
            }
            let mut duplicate = Vec::with_capacity(chunk.len());
            for ack in acks {
                match tokio::time::timeout(WAIT, ack).await {
                    Ok(Ok(a)) => duplicate.push(a.duplicate),
                    _ => failed = true,
                }
            }
            if !failed {
                out.duplicate.extend(duplicate);
                break;
            }
            out.retries += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
            js = connect_js(url).await;
        }
    }
    out
}

/// Why a message of the publish plan is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    Original,
    /// The same event again right after it: within JetStream's duplicate window.
    ImmediateResend,
    /// The same event again after the window.
    LateResend,
    /// The same id after the window with another payload.
    Conflicting,
}

/// Counts the messages of `kind` in a plan, and those of them JetStream dropped.
fn dropped(plan: &[(OutgoingEvent, Sent)], published: &Published, kind: Sent) -> (usize, usize) {
    let of_kind = plan.iter().filter(|(_, k)| *k == kind).count();
    let dropped = plan
        .iter()
        .zip(&published.duplicate)
        .filter(|((_, k), d)| *k == kind && **d)
        .count();
    (of_kind, dropped)
}

/// The manifest's events: the fleet's LLM token and tool call events, tool calls naming a
/// target, token events carrying a context size gauge, and about a fifth turned into
/// `agent.run` events with a duration in seconds (a decimal string) and an outcome.
fn enrich(unique: &mut [OutgoingEvent], rng: &mut StdRng) {
    for e in unique.iter_mut() {
        if rng.random_bool(0.2) {
            let seconds = format!(
                "{}.{:03}",
                rng.random_range(0..900u32),
                rng.random_range(0..1000u32)
            );
            let outcome = ["ok", "error"][rng.random_range(0..2usize)];
            e.event_type = "agent.run".into();
            e.data = serde_json::json!({"seconds": seconds, "outcome": outcome});
        } else if e.event_type == "llm.tokens" {
            e.data["context"] = serde_json::json!({"size": rng.random_range(0..=200_000u32)});
        } else {
            e.data["target"] = Value::String(format!("doc-{}", rng.random_range(0..40u32)));
        }
    }
}

/// Gives about half the LATEST groups with two or more events a tie on the latest time: one
/// more event of the group gets the latest event's time, so the event id decides. Returns
/// how many ties it made.
fn make_latest_ties(unique: &mut [OutgoingEvent], rng: &mut StdRng) -> usize {
    let size_ms = i64::from(WINDOW_SECS) * 1000;
    let mut groups: BTreeMap<(String, String, i64, String), Vec<usize>> = BTreeMap::new();
    for (i, e) in unique.iter().enumerate() {
        if e.event_type == "llm.tokens" {
            let window = e.time.timestamp_millis().div_euclid(size_ms);
            let model = text(field(&e.data, "model"));
            groups
                .entry((e.customer.to_string(), e.agent.to_string(), window, model))
                .or_default()
                .push(i);
        }
    }
    let mut ties = 0;
    for members in groups.values() {
        if members.len() < 2 || !rng.random_bool(0.5) {
            continue;
        }
        let latest = *members
            .iter()
            .max_by_key(|i| {
                (
                    unique[**i].time.timestamp_millis(),
                    unique[**i].id.to_string(),
                )
            })
            .expect("members");
        let others: Vec<usize> = members.iter().copied().filter(|i| *i != latest).collect();
        let tied = others[rng.random_range(0..others.len())];
        unique[tied].time = unique[latest].time;
        ties += 1;
    }
    ties
}

/// A re-send of `e` with another payload: another (or the same) type, the same time; when
/// the type is kept, so are the group values, and only the metered values change.
fn forged(e: &OutgoingEvent, rng: &mut StdRng) -> OutgoingEvent {
    let mut f = e.clone();
    f.event_type = ["llm.tokens", "tool.call", "agent.run"][rng.random_range(0..3usize)].into();
    let same = f.event_type == e.event_type;
    let keep = |k: &str| {
        if same {
            e.data[k].clone()
        } else {
            Value::from("forged")
        }
    };
    f.data = match f.event_type.as_str() {
        "llm.tokens" => serde_json::json!({"tokens": 999_999, "model": keep("model"),
            "kind": keep("kind"), "context": {"size": 999_999_999}}),
        "tool.call" => serde_json::json!({"tool": keep("tool"), "target": "forged"}),
        _ => {
            let seconds = if rng.random_bool(0.5) {
                "0.000"
            } else {
                "99999.999"
            };
            serde_json::json!({"seconds": seconds, "outcome": keep("outcome")})
        }
    };
    f
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

async fn committed_usage(db: &clickhouse::Client) -> Usage {
    // group names and values joined by tabs (no value of the test contains one)
    type Row = (String, String, String, u32, String, String, String, u64);
    let rows: Vec<Row> = db
        .query(
            "SELECT customer, agent, meter, toUInt32(window_start), \
             arrayStringConcat(group_names, '\\t'), arrayStringConcat(group_values, '\\t'), \
             toString(quantity), event_count FROM v_usage",
        )
        .fetch_all()
        .await
        .expect("usage query");
    let split = |s: &str| -> Vec<String> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('\t').map(str::to_owned).collect()
        }
    };
    let mut usage = Usage::new();
    for (c, a, m, w, names, values, q, n) in rows {
        let (names, values) = (split(&names), split(&values));
        assert_eq!(names.len(), values.len(), "group of {c} {a} {m} {w}");
        let group = group_text(
            names
                .iter()
                .map(String::as_str)
                .zip(values.iter().map(String::as_str)),
        );
        let q = Decimal::from_str(&q).expect("decimal").normalize();
        let key = (c, a, m, i64::from(w), group);
        assert!(
            usage.insert(key.clone(), (q, n)).is_none(),
            "v_usage has two rows for {key:?}"
        );
    }
    usage
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
        duplicate_window_secs: DUPLICATE_WINDOW_SECS,
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
    let mut stream = streams::ensure(&js, &nats_cfg).await.unwrap();
    let window = stream.info().await.unwrap().config.duplicate_window;
    assert_eq!(
        window,
        Duration::from_secs(DUPLICATE_WINDOW_SECS),
        "the stream's duplicate window"
    );

    // The manifest: unique events, event times spread over 30 minutes, sent shuffled.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fleet = Fleet::new("cust", 5, 4, &format!("f{seed}"), seed).unwrap();
    // `now` on a window boundary, so a seed gives the same manifest (windows, ties, re-sends)
    // on every run, only shifted in time.
    let size_ms = i64::from(WINDOW_SECS) * 1000;
    let now_ms = Utc::now().timestamp_millis();
    let now = DateTime::from_timestamp_millis(now_ms - now_ms.rem_euclid(size_ms)).unwrap();
    let mut unique: Vec<OutgoingEvent> = (0..events_n)
        .map(|_| {
            fleet.next_event(now - ChronoDuration::milliseconds(rng.random_range(0..1_800_000)))
        })
        .collect();
    enrich(&mut unique, &mut rng);
    let latest_ties = make_latest_ties(&mut unique, &mut rng);
    unique.shuffle(&mut rng);
    // Phase 1: the unique events, 10% of them published again right after the original, well
    // inside the duplicate window (at most a chunk of 200 later, a fraction of a second at the
    // publishing rate): JetStream itself should drop them.
    let mut plan1 = Vec::with_capacity(events_n * 11 / 10);
    for e in &unique {
        plan1.push((e.clone(), Sent::Original));
        if rng.random_bool(0.1) {
            plan1.push((e.clone(), Sent::ImmediateResend));
        }
    }
    // Phase 2, after the window: 7% same-payload re-sends, 3% re-sends with another payload.
    // Each id at most once in this phase: JetStream would drop a second publish of an id
    // inside its duplicate window before the aggregator ever saw it.
    let mut picks: Vec<usize> = (0..events_n).collect();
    picks.shuffle(&mut rng);
    let (resends, rest) = picks.split_at(events_n * 7 / 100);
    let mut plan2: Vec<(OutgoingEvent, Sent)> = resends
        .iter()
        .map(|i| (unique[*i].clone(), Sent::LateResend))
        .collect();
    let mut conflicting_ids = BTreeSet::new();
    for i in &rest[..events_n * 3 / 100] {
        let f = forged(&unique[*i], &mut rng);
        conflicting_ids.insert(f.id.to_string());
        plan2.push((f, Sent::Conflicting));
    }
    plan2.shuffle(&mut rng);

    // A copy of the binary: every restart runs the same build, even if the workspace is
    // rebuilt while the test runs.
    let binary = dir.join("tally-aggregator");
    std::fs::copy(env!("CARGO_BIN_EXE_tally-aggregator"), &binary).expect("copy the binary");
    let mut chaos = Chaos {
        binary: binary.display().to_string(),
        config: config.clone(),
        log: dir.join("aggregator.log"),
        current: None,
        kills: 0,
    };
    chaos.start();

    // Phase 1 over ~40 s, with kills every ~2 s, a zombie, a ClickHouse outage, a NATS restart.
    let per_sec = plan1.len() as f64 / 40.0;
    let publisher = {
        let url = nats_cfg.url.clone();
        let prefix = nats_cfg.subject_prefix.clone();
        let events: Vec<OutgoingEvent> = plan1.iter().map(|(e, _)| e.clone()).collect();
        tokio::spawn(async move { publish_all(&url, &prefix, &events, per_sec).await })
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
                // the consuming instance is paused past AckWait and its lease with a batch in
                // hand; a second instance takes the partition over and gets the messages
                // redelivered; the first resumes as a zombie and must be fenced (it would
                // otherwise commit the same events a second time)
                tokio::time::sleep(Duration::from_millis(700)).await;
                let zombie = chaos.current.take().expect("a running instance");
                zombie.signal("STOP");
                chaos.start();
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
    let published1 = tokio::time::timeout(Duration::from_secs(300), publisher)
        .await
        .expect("phase 1: the publisher finishes within 5 minutes")
        .unwrap();
    wait_drained_or_panic(&js, &nats_cfg.stream, "phase 1").await;
    let stored1 = stream_messages(&js, &nats_cfg.stream).await;

    // Phase 2: re-sends after the duplicate window, with two more kills.
    tokio::time::sleep(Duration::from_secs(DUPLICATE_WINDOW_SECS + 1)).await;
    let publisher = {
        let url = nats_cfg.url.clone();
        let prefix = nats_cfg.subject_prefix.clone();
        let events: Vec<OutgoingEvent> = plan2.iter().map(|(e, _)| e.clone()).collect();
        tokio::spawn(async move { publish_all(&url, &prefix, &events, 2000.0).await })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        chaos.kill9_and_restart();
    }
    let published2 = tokio::time::timeout(Duration::from_secs(300), publisher)
        .await
        .expect("phase 2: the publisher finishes within 5 minutes")
        .unwrap();
    wait_drained_or_panic(&js, &nats_cfg.stream, "phase 2").await;
    let stored2 = stream_messages(&js, &nats_cfg.stream).await;
    let kills = chaos.kills;
    assert!(
        kills >= 10,
        "at least 10 kill -9 of the consuming aggregator, got {kills}"
    );
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

    // What JetStream dropped itself (the publish ack's `duplicate`) and what reached the
    // aggregator (messages the stream stored beyond one per unique event).
    let (immediate, immediate_dropped) = dropped(&plan1, &published1, Sent::ImmediateResend);
    let (_, originals_dropped) = dropped(&plan1, &published1, Sent::Original);
    let (late, late_dropped) = dropped(&plan2, &published2, Sent::LateResend);
    let (conflicting, conflicting_dropped) = dropped(&plan2, &published2, Sent::Conflicting);
    assert_eq!(
        late_dropped + conflicting_dropped,
        0,
        "re-sends after the duplicate window reach the aggregator"
    );
    let reached = stored2 - events_n as u64;

    // Committed usage equals the oracle of the unique events, per (customer, agent, meter,
    // window, group), for every meter.
    let db = store::connect(&ch_cfg);
    let want = oracle(&unique);
    let got = committed_usage(&db).await;
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| (k, v, got.get(k)))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        differ.is_empty() && extra.is_empty(),
        "differences (key, want, got): {differ:?} extra: {extra:?}"
    );
    let mut per_meter: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, m, _, _) in want.keys() {
        *per_meter.entry(m.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_meter.len(),
        METERS.len(),
        "every meter has usage: {per_meter:?}"
    );

    // Each accepted (event, meter) reading counted once: readings in v_usage against the
    // manifest's pairs, committed identities against the manifest's.
    let expected = expected_readings(&unique);
    let identities: Vec<(String, String, String)> = db
        .query("SELECT customer, event_id, meter FROM v_usage_readings")
        .fetch_all()
        .await
        .expect("readings query");
    let committed: BTreeSet<(String, String, String)> = identities.iter().cloned().collect();
    let missing_readings: Vec<_> = expected.difference(&committed).collect();
    let missing_events: BTreeSet<&str> = missing_readings.iter().map(|r| r.1.as_str()).collect();
    let unexpected: Vec<_> = committed.difference(&expected).take(5).collect();
    let counted: u64 = got.values().map(|v| v.1).sum();
    let present = (expected.len() - missing_readings.len()) as u64;
    let billed_twice = counted.saturating_sub(present);
    let manifest_ids: BTreeSet<&str> = unique.iter().map(|e| e.id.as_str()).collect();
    let billed = committed
        .iter()
        .map(|r| r.1.as_str())
        .filter(|id| manifest_ids.contains(id))
        .collect::<BTreeSet<_>>()
        .len();
    assert!(
        unexpected.is_empty(),
        "readings no accepted event produces: {unexpected:?}"
    );
    assert_eq!(
        identities.len(),
        committed.len(),
        "v_usage_readings lists each identity once"
    );
    assert_eq!(
        billed_twice, 0,
        "readings counted in v_usage ({counted}) beyond the accepted (event, meter) pairs committed ({present})"
    );
    assert!(
        missing_readings.is_empty(),
        "{} readings of {} events missing, e.g. {:?}",
        missing_readings.len(),
        missing_events.len(),
        missing_readings.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(billed, events_n, "each unique event billed");

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

    // How much the faults made the pipeline repeat itself: reading rows written (aborted
    // attempts, fenced zombies) against those that count, which are one per (event, meter).
    let (rows, counted_rows, distinct): (u64, u64, u64) = db
        .query(
            "SELECT count(), countIf(batch_id NOT IN (SELECT batch_id FROM usage_aborts)), \
             uniqExactIf((customer, agent, event_id, meter), batch_id NOT IN (SELECT batch_id FROM usage_aborts)) \
             FROM usage_meter_readings",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        counted_rows, distinct,
        "no (event, meter) counted twice in storage"
    );
    let injected = immediate + late + conflicting;
    let sent = published1.calls + published2.calls;
    let retries = published1.retries + published2.retries;
    let readings = expected.len();
    let meters = METERS.len();
    let window_secs = window.as_secs();
    let immediate_reached = immediate - immediate_dropped;
    let (missing_events, missing_readings) = (missing_events.len(), missing_readings.len());
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fault report: seed {seed}; events sent {sent}, unique {events_n}, billed {billed} \
         ({readings} readings of {meters} meters: {per_meter:?} usage rows, {latest_ties} LATEST time ties); \
         duplicates injected {injected}: {immediate} right after the original (JetStream window {window_secs}s \
         dropped {immediate_dropped}, {immediate_reached} reached the aggregator), {late} same payload after the \
         window, {conflicting} conflicting; publisher: {retries} chunks published again, {originals_dropped} of \
         their originals dropped by JetStream; the stream stored {stored1} messages in phase 1, {stored2} in all: \
         {reached} beyond the unique events reached the aggregator; billed twice {billed_twice}, missing \
         {missing_events} events ({missing_readings} readings); faults: {kills} kill -9, {zombies} zombie pause \
         past AckWait, restarts {restarts:?} (during the outage: at most {outage_ack_pending_max} unacknowledged, \
         RSS at most {outage_rss_kib_max} KiB); reading rows written {rows}, counted {counted_rows} for {distinct} distinct; {secs:.0}s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.expect("the stream");
    s.info().await.expect("stream info").state.messages
}
