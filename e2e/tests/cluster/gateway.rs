//! The HTTP gateway behind any node: three `tally-gateway` processes, each with its own
//! configuration file naming a different NATS node first and a different ClickHouse replica,
//! take the same events, as clients that send a batch through two gateways at once and send
//! again what was not stored do, while a NATS node is killed and started again.
//!
//! Every batch holds some events twice in a row and goes through two gateways at the same
//! time, so on the R3 stream a send often meets its original still being replicated:
//! nats-server 2.15 answers it 409 "duplicate message id is in process" (10158), which the
//! gateway sends again until it is answered (`tally_ingest::publisher::settle`). Phase 1 has
//! no fault: every event's result is `accepted` exactly once and `duplicate` otherwise, none
//! `failed`, and the gateways' `tally_gateway_in_process_resends_total` shows the 409s met.
//! Phase 2 kills NATS node 2 (gateway 2's first node) and starts it again while the batches
//! go on; the client sends an event again, through the next gateway, until it is `accepted`
//! or `duplicate`. An aggregator process commits the stream; from the data, on each replica:
//! every (event, meter) reading committed once, 0 missing, 0 billed twice.
//!
//! The run has a NATS namespace of its own (`clgw<pid>`: its subjects are outside the
//! cluster's `usage.*.*` partition mapping) and a database of its own, both removed after.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use tally_ingest::gateway::key_store;
use tally_ingest::synthetic::Fleet;
use tally_ingest::OutgoingEvent;
use tally_platform::{migrate, store, streams, NatsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chaos::{check_readings, drop_run, node, process_config};
use crate::nodes::{binary, Cluster, Process};

const GATEWAYS: usize = 3;
const BATCH: usize = 100;
/// Most of a request: a gateway whose NATS node was killed answers `failed` after
/// JetStream's ack timeout, well within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback port (taken from the kernel, then released for the process to bind).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// One HTTP/1.1 request on a fresh connection: the status and the body, or `None` when the
/// gateway cannot be reached or does not answer within [`REQUEST_TIMEOUT`].
async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(head.as_bytes()).await.ok()?;
        s.write_all(body).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let status = text.get(9..12)?.parse().ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// `POST /v1/events` of `events` as one batch with API key `key`: the JSON answer.
async fn post(addr: SocketAddr, key: &str, events: &[&OutgoingEvent]) -> Option<serde_json::Value> {
    let mut body = b"[".to_vec();
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend(e.to_json());
    }
    body.push(b']');
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nauthorization: Bearer {key}\r\n\
         content-type: application/cloudevents-batch+json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let (_, answer) = http(addr, &head, &body).await?;
    serde_json::from_str(&answer).ok()
}

/// A gateway's `tally_gateway_in_process_resends_total`.
async fn in_process_resends(metrics: SocketAddr) -> u64 {
    let head = "GET /metrics HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";
    let (_, text) = http(metrics, head, b"")
        .await
        .expect("the gateway's metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("tally_gateway_in_process_resends_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// What a client saw, per event sent.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    requests: u64,
    accepted: u64,
    duplicate: u64,
    failed: u64,
    /// Requests without a per-event answer (no connection, a timeout, a refusal).
    unanswered: u64,
}

impl Seen {
    fn add(&mut self, o: Seen) {
        self.requests += o.requests;
        self.accepted += o.accepted;
        self.duplicate += o.duplicate;
        self.failed += o.failed;
        self.unanswered += o.unanswered;
    }
}

/// Sends `events` (one customer's, with its key) through gateway `first`, then what was not
/// stored (`failed`, or a request without an answer) through the next gateway, and so on,
/// until every event is `accepted` or `duplicate` (within 2 minutes), as a client does.
async fn send_until_stored(
    gateways: &[SocketAddr],
    key: &str,
    events: &[OutgoingEvent],
    first: usize,
) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: Vec<&OutgoingEvent> = events.iter().collect();
    let (mut seen, mut g, mut last) = (Seen::default(), first, serde_json::Value::Null);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} events not stored within 2 minutes ({seen:?}; the last failure: {last})",
            pending.len()
        );
        seen.requests += 1;
        let answer = post(gateways[g % gateways.len()], key, &pending).await;
        let results = answer.as_ref().and_then(|a| a["results"].as_array());
        let Some(results) = results else {
            seen.unanswered += 1;
            g += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let mut again = Vec::new();
        for r in results {
            let index = r["index"].as_u64().expect("index") as usize;
            match r["status"].as_str() {
                Some("accepted") => seen.accepted += 1,
                Some("duplicate") => seen.duplicate += 1,
                Some("failed") => {
                    seen.failed += 1;
                    last = r.clone();
                    again.push(pending[index]);
                }
                _ => panic!("event {} answered {r}", pending[index].id),
            }
        }
        pending = again;
        if !pending.is_empty() {
            g += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    seen
}

/// The batches of a phase: each customer's events in chunks of [`BATCH`], every tenth
/// event sent twice in a row; with the customer's index.
fn batches(events: &[OutgoingEvent], customers: &[String]) -> Vec<(usize, Vec<OutgoingEvent>)> {
    let mut out = Vec::new();
    for (c, customer) in customers.iter().enumerate() {
        let own: Vec<&OutgoingEvent> = events
            .iter()
            .filter(|e| e.customer.as_ref() == customer.as_str())
            .collect();
        for chunk in own.chunks(BATCH) {
            let mut batch = Vec::with_capacity(chunk.len() * 11 / 10 + 1);
            for (i, e) in chunk.iter().enumerate() {
                batch.push((*e).clone());
                if i % 10 == 0 {
                    batch.push((*e).clone());
                }
            }
            out.push((c, batch));
        }
    }
    out
}

/// Sends every batch through two gateways at once (batch `j` through gateways `j` and
/// `j + 1`), one batch every `pause`.
async fn send_phase(
    gateways: &[SocketAddr],
    keys: &[String],
    batches: &[(usize, Vec<OutgoingEvent>)],
    pause: Duration,
) -> Seen {
    let mut tasks = Vec::new();
    for (j, (c, batch)) in batches.iter().enumerate() {
        for first in [j, j + 1] {
            let (gws, key, batch) = (gateways.to_vec(), keys[*c].clone(), batch.clone());
            tasks.push(tokio::spawn(async move {
                send_until_stored(&gws, &key, &batch, first).await
            }));
        }
        tokio::time::sleep(pause).await;
    }
    let mut seen = Seen::default();
    for t in tasks {
        seen.add(t.await.expect("a client"));
    }
    seen
}

/// Starts gateway `i` (NATS node `i` first, replica `i`) and waits until it listens.
fn start_gateway(
    i: usize,
    cluster: &Cluster,
    database: &str,
    nats: &NatsConfig,
    dir: &Path,
) -> (Process, SocketAddr, SocketAddr) {
    use toml::Value;
    let (listen, metrics) = (free_addr(), free_addr());
    let name = format!("gateway-{}", i + 1);
    let config = process_config(
        dir,
        &name,
        cluster,
        database,
        i,
        i,
        &run_settings(
            nats,
            [
                ("ingest", "listen_addr", Value::from(listen.to_string())),
                ("ingest", "metrics_addr", Value::from(metrics.to_string())),
            ],
        ),
    );
    let mut p = Process::start(&name, &binary("tally-gateway", dir), &config, &[], dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(listen).is_err() {
        let exited = p.wait(Duration::from_millis(200));
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "{name} does not listen on {listen} ({exited:?}): {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
    }
    (p, listen, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cluster: scripts/cluster.sh test"]
async fn the_gateway_behind_any_node_stores_each_event_once() {
    const PHASE1: usize = 3_000;
    const PHASE2: usize = 6_000;
    let started = Instant::now();
    let cluster = Cluster::from_env();
    let pid = std::process::id();
    let database = format!("cl_gateway_{pid}");
    let dir = std::env::temp_dir().join(format!("tally-cluster-gateway-{pid}"));
    std::fs::create_dir_all(&dir).expect("a directory for the run");
    let ch = cluster.clickhouse_config(0, &database);
    migrate::apply(&ch)
        .await
        .expect("migrations on the cluster");
    let nats = NatsConfig {
        url: cluster.nats_url(0),
        replicas: 3,
        duplicate_window_secs: 120,
        ..NatsConfig::default()
    }
    .with_namespace(&format!("clgw{pid}"));

    let js = jetstream::new(streams::connect(&nats).await.expect("nats"));
    remove_earlier_runs(&js).await;

    let mut fleet = Fleet::new("gw", 3, 3, &format!("gw{pid}"), 11).expect("a fleet");
    let unique: Vec<OutgoingEvent> = (0..PHASE1 + PHASE2)
        .map(|_| fleet.next_event(Utc::now()))
        .collect();
    let mut customers: Vec<String> = unique.iter().map(|e| e.customer.to_string()).collect();
    customers.sort();
    customers.dedup();
    let db = store::connect(&ch);
    let mut keys = Vec::new();
    for c in &customers {
        let scope = key_store::scope_from(c, &[], "cluster").expect("a scope");
        let now_ms = Utc::now().timestamp_millis();
        let (token, _) = key_store::create(&db, scope, "cluster", now_ms)
            .await
            .expect("an API key");
        keys.push(token);
    }

    let mut gateways = Vec::new();
    for i in 0..GATEWAYS {
        gateways.push(start_gateway(i, &cluster, &database, &nats, &dir));
    }
    let listen: Vec<SocketAddr> = gateways.iter().map(|g| g.1).collect();
    let aggregator = Process::start(
        "aggregator",
        &binary("tally-aggregator", &dir),
        &aggregator_config(&cluster, &database, &nats, &dir),
        &[],
        &dir,
    );

    // phase 1: no fault; every 409 "in process" is sent again, never `failed`
    let phase1 = send_phase(
        &listen,
        &keys,
        &batches(&unique[..PHASE1], &customers),
        Duration::from_millis(20),
    )
    .await;
    let mut resends = 0;
    for g in &gateways {
        resends += in_process_resends(g.2).await;
    }
    println!("cluster gateway: phase 1 (no fault): {phase1:?}; {resends} sends answered \"in process\" and sent again");
    assert_eq!(
        (phase1.failed, phase1.unanswered),
        (0, 0),
        "no fault, no failure"
    );
    assert_eq!(
        phase1.accepted, PHASE1 as u64,
        "each event accepted once, every other send a duplicate"
    );
    assert!(
        resends > 0,
        "no send met its original still being replicated: the test did not exercise the \
         gateway's re-send (a NATS version that no longer answers 10158?)"
    );

    // phase 2: NATS node 2 killed and started again while the batches go on
    let phase2 = {
        let (listen, keys) = (listen.clone(), keys.clone());
        let batches = batches(&unique[PHASE1..], &customers);
        tokio::spawn(async move {
            send_phase(&listen, &keys, &batches, Duration::from_millis(150)).await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    node(&cluster, "kill", "nats", 2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    node(&cluster, "start", "nats", 2).await;
    let phase2 = tokio::time::timeout(Duration::from_secs(300), phase2)
        .await
        .expect("phase 2 sent within 5 minutes")
        .expect("phase 2");
    println!("cluster gateway: phase 2 (NATS node 2 killed and started): {phase2:?}");

    streams::wait_drained(&js, &nats.stream, "aggregator", Duration::from_secs(300)).await;
    let stored = js
        .get_stream(&nats.stream)
        .await
        .expect("the usage stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    let report = check_readings(&cluster, &database, &unique).await;
    println!(
        "cluster gateway report: {} unique events through {GATEWAYS} gateways; {stored} \
         messages in the stream; {report}; {:.0}s in all",
        unique.len(),
        started.elapsed().as_secs_f64()
    );

    for p in gateways
        .into_iter()
        .map(|g| g.0)
        .chain(std::iter::once(aggregator))
    {
        let name = p.name.clone();
        let status = p.terminate(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} stops cleanly on SIGTERM"
        );
    }
    for s in [
        nats.stream.clone(),
        nats.dlq_stream.clone(),
        format!("KV_{}", nats.lease_bucket()),
    ] {
        let _ = js.delete_stream(s).await;
    }
    drop_run(&ch, &database, &dir).await;
}

/// Deletes the streams an earlier run of this test left (one that failed before its end):
/// each holds a reservation of JetStream's storage.
async fn remove_earlier_runs(js: &jetstream::Context) {
    use futures::TryStreamExt;
    let names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .expect("the stream names");
    for name in names
        .iter()
        .filter(|n| n.starts_with("CLGW") || n.starts_with("KV_CLGW"))
    {
        js.delete_stream(name)
            .await
            .expect("delete an earlier run's stream");
    }
}

/// The settings naming the run's streams (no partitions, JetStream's duplicate window of two
/// minutes: longer than the run, 512 MiB at most), then `more`.
fn run_settings<const N: usize>(
    nats: &NatsConfig,
    more: [(&'static str, &'static str, toml::Value); N],
) -> Vec<(&'static str, &'static str, toml::Value)> {
    use toml::Value;
    let mut set = vec![
        ("nats", "partitions", Value::from(0)),
        ("nats", "stream", Value::from(nats.stream.as_str())),
        (
            "nats",
            "subject_prefix",
            Value::from(nats.subject_prefix.as_str()),
        ),
        ("nats", "dlq_stream", Value::from(nats.dlq_stream.as_str())),
        (
            "nats",
            "dlq_subject_prefix",
            Value::from(nats.dlq_subject_prefix.as_str()),
        ),
        ("nats", "duplicate_window_secs", Value::from(120)),
        // JetStream reserves a stream's max_bytes on each of its nodes
        (
            "nats",
            "max_bytes",
            Value::from(super::chaos::STREAM_MAX_BYTES),
        ),
        (
            "nats",
            "dlq_max_bytes",
            Value::from(super::chaos::DLQ_MAX_BYTES),
        ),
    ];
    set.extend(more);
    set
}

/// The aggregator's configuration: the run's streams, no partitions, NATS node 3 first.
fn aggregator_config(
    cluster: &Cluster,
    database: &str,
    nats: &NatsConfig,
    dir: &Path,
) -> std::path::PathBuf {
    use toml::Value;
    process_config(
        dir,
        "aggregator",
        cluster,
        database,
        2,
        1,
        &run_settings(
            nats,
            [
                ("aggregator", "batch_max_events", Value::from(2000)),
                ("aggregator", "batch_max_wait_ms", Value::from(200)),
                ("aggregator", "lease_replicas", Value::from(3)),
                ("aggregator", "metrics_addr", Value::from("127.0.0.1:0")),
            ],
        ),
    )
}
