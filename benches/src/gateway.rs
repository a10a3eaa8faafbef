//! Ingest throughput over the real local NATS: the HTTP gateway (batches of `batch` events
//! over `connections` keep-alive HTTP/1.1 connections, each request answered only after
//! JetStream acked every event) against the direct JetStream [`Publisher`] (256 publishes in
//! flight), in the same run, into their own throwaway streams. Events are the synthetic
//! fleet's (about 200 bytes). Needs NATS on `TALLY_TEST_NATS_URL` (default 127.0.0.1:4222) and
//! ClickHouse for the test environment's database.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tally_ingest::gateway::auth::{generate, KeyRecord, Scope};
use tally_ingest::gateway::{self, Gateway, IngestConfig};
use tally_ingest::synthetic::Fleet;
use tally_ingest::{OutgoingEvent, Publisher};
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

/// What one run measured.
#[derive(Debug)]
pub struct GatewayReport {
    pub events: usize,
    pub batch: usize,
    pub connections: usize,
    pub direct_events_per_sec: f64,
    pub gateway_events_per_sec: f64,
    /// Milliseconds per HTTP batch: p50, p99, max.
    pub batch_ms: (f64, f64, f64),
    pub mean_event_bytes: usize,
}

fn events(run: &str, n: usize) -> anyhow::Result<Vec<OutgoingEvent>> {
    // One customer, so one API key covers the whole fleet.
    let mut fleet = Fleet::new("bench", 1, 8, run, 7)?;
    let now = chrono::Utc::now();
    Ok((0..n).map(|_| fleet.next_event(now)).collect())
}

/// Runs both publishers over `events` events each.
pub fn run(n: usize, batch: usize, connections: usize) -> anyhow::Result<GatewayReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(n, batch.max(1), connections.max(1)))
}

async fn run_async(n: usize, batch: usize, connections: usize) -> anyhow::Result<GatewayReport> {
    let direct_env = TestEnv::new("bench_direct").await;
    let gateway_env = TestEnv::new("bench_gateway").await;
    let result = measure(&direct_env, &gateway_env, n, batch, connections).await;
    direct_env.cleanup().await;
    gateway_env.cleanup().await;
    result
}

async fn measure(
    direct_env: &TestEnv,
    gateway_env: &TestEnv,
    n: usize,
    batch: usize,
    connections: usize,
) -> anyhow::Result<GatewayReport> {
    let nats = streams::connect(&direct_env.nats).await?;
    let js = async_nats::jetstream::new(nats);
    streams::ensure(&js, &direct_env.nats).await?;
    streams::ensure(&js, &gateway_env.nats).await?;

    let direct_events = events("direct", n)?;
    let mean_event_bytes = direct_events
        .iter()
        .map(|e| e.to_json().len())
        .sum::<usize>()
        / n.max(1);
    let mut publisher = Publisher::new(js.clone(), &direct_env.nats.subject_prefix, 256);
    let started = Instant::now();
    for e in &direct_events {
        publisher.publish(e).await?;
    }
    let stats = publisher.flush().await?;
    let direct_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        stats.stored as usize == n,
        "direct: {} of {n} stored",
        stats.stored
    );

    let cfg = IngestConfig {
        listen_addr: "127.0.0.1:0".into(),
        batch_max_events: batch.max(1000),
        rate_per_key_per_sec: 10_000_000,
        burst_per_key: 10_000_000,
        body_max_bytes: 16 << 20,
        ..IngestConfig::default()
    };
    let addr = cfg.listen()?;
    let gw = Arc::new(Gateway::new(
        cfg,
        js.clone(),
        &gateway_env.nats.subject_prefix,
        None,
    ));
    let (token, key_id, secret_sha256) = generate()?;
    gw.keys.upsert(KeyRecord {
        key_id,
        scope: Scope {
            customer: tally_domain::CustomerId::new("bench-1")?,
            agents: vec![],
        },
        secret_sha256,
        label: "bench".into(),
        created_ms: 0,
        revoked: false,
    });
    let running = gateway::start(gw, addr, Shutdown::new()).await?;

    let bodies: Vec<Bytes> = events("gateway", n)?
        .chunks(batch)
        .map(|chunk| {
            let parts: Vec<String> = chunk
                .iter()
                .map(|e| String::from_utf8_lossy(&e.to_json()).into_owned())
                .collect();
            Bytes::from(format!("[{}]", parts.join(",")))
        })
        .collect();
    let per_conn: Vec<Vec<Bytes>> = (0..connections)
        .map(|c| {
            bodies
                .iter()
                .skip(c)
                .step_by(connections)
                .cloned()
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for bodies in per_conn {
        let token = token.clone();
        tasks.push(tokio::spawn(post_all(running.addr, token, bodies)));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut stored = 0usize;
    for t in tasks {
        let (h, accepted) = t.await??;
        hist.add(h)?;
        stored += accepted;
    }
    let gateway_secs = started.elapsed().as_secs_f64();
    running.stop().await;
    anyhow::ensure!(stored == n, "gateway: {stored} of {n} accepted");
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(GatewayReport {
        events: n,
        batch,
        connections,
        direct_events_per_sec: n as f64 / direct_secs,
        gateway_events_per_sec: n as f64 / gateway_secs,
        batch_ms: (
            ms(hist.value_at_quantile(0.5)),
            ms(hist.value_at_quantile(0.99)),
            ms(hist.max()),
        ),
        mean_event_bytes,
    })
}

/// Posts `bodies` one after another on one keep-alive connection; returns the per-request
/// latency histogram (µs) and the events accepted.
async fn post_all(
    addr: std::net::SocketAddr,
    token: String,
    bodies: Vec<Bytes>,
) -> anyhow::Result<(Histogram<u64>, usize)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut hist = Histogram::<u64>::new(3)?;
    let mut accepted = 0usize;
    let auth = format!("Bearer {token}");
    for body in bodies {
        let req = hyper::Request::post("/v1/events")
            .header("host", "bench")
            .header("authorization", &auth)
            .header("content-type", "application/cloudevents-batch+json")
            .body(Full::new(body))?;
        let t = Instant::now();
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        hist.record(t.elapsed().as_micros() as u64)?;
        anyhow::ensure!(
            status == 200,
            "gateway answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes)?;
        accepted += v["accepted"].as_u64().unwrap_or(0) as usize;
    }
    Ok((hist, accepted))
}
