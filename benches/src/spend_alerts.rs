//! Spend alerts end to end (issue 15's "threshold crossed → NATS event and webhook delivered,
//! p99 ≤ 2 s"), on the local stack: many customers, each with a quantity budget of
//! [`LIMIT`] tool calls and the thresholds [`THRESHOLDS`]; usage published to the usage
//! stream in steps that cross one threshold each, paced to a fixed rate of crossings; the
//! aggregator and one spend decider in process (as in [`crate::spend`]) publish the alerts,
//! and the payments service's real spend-alert deliverer ([`tally_payments::spend_alerts::run`])
//! in process sends each as a signed webhook to a local plain-HTTP sink (the `dev` profile's
//! `http://` endpoints).
//!
//! Per alert, from the **crossing** (`crossed_at_ms` of the alert: the decider's wall clock,
//! in milliseconds, when it decided the crossing, before publishing) to the alert received by
//! a core NATS subscriber on `<root>.alerts.>`, and to the webhook received in full by the
//! sink; and the same two from the **publish** of the usage event that crossed (the wall
//! clock just before it was published; aggregator commit included). The sink checks each
//! webhook as a customer would ([`verify_signature`]: its own HMAC-SHA256 over `"{t}.{body}"`
//! with the customer's endpoint secret, not the payments crate's verifier) and counts each
//! notification once ([`Once`]); every threshold of every customer must arrive exactly once.
//!
//! It owns its streams, consumer and database (a [`TestEnv`] of its own, deleted at the end)
//! and never decides a test outcome: the figures are reported, the goal is checked in the
//! report's text only.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ring::hmac;
use rust_decimal::Decimal;
use tally_domain::CustomerId;
use tally_ingest::spend::{FailurePolicy, SpendClient};
use tally_payments::config::{DunningConfig, PaymentsConfig, SecretString};
use tally_payments::dunning::deliver;
use tally_payments::spend_alerts::{self, AlertsSource, Deliverer};
use tally_platform::clock::now_ms;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_platform::Profile;
use tally_rater::live::budget::{self, Budget, Kind};

use crate::spend::{bootstrap_catalog, spend_config, tool_call, Latency, Pipeline};

/// Each customer's budget: this many tool calls.
pub const LIMIT: u64 = 10;
/// The budget's thresholds, percent of [`LIMIT`].
pub const THRESHOLDS: [u8; 3] = [50, 80, 100];
/// The budget's id.
const BUDGET: &str = "alerts";
/// The goal: p99 of crossing to webhook delivered.
pub const GOAL_P99_US: u64 = 2_000_000;
/// A signature older or newer than this (seconds) is refused, as Stripe's libraries do.
const TOLERANCE_SECS: i64 = 300;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct AlertFigures {
    pub customers: usize,
    pub crossings_per_sec: u64,
    /// Alerts expected: customers × thresholds.
    pub expected: u64,
    /// Crossing (`crossed_at_ms`) to the NATS alert received.
    pub nats: Latency,
    /// Crossing (`crossed_at_ms`) to the webhook received.
    pub webhook: Latency,
    /// Publish of the crossing usage event to the NATS alert received.
    pub nats_from_publish: Latency,
    /// Publish of the crossing usage event to the webhook received.
    pub webhook_from_publish: Latency,
    pub nats_counts: Counts,
    pub webhook_counts: Counts,
    /// Webhooks whose signature did not verify with the customer's secret (not counted).
    pub bad_signatures: u64,
    /// Seconds from the first publish to the last webhook.
    pub elapsed_secs: f64,
}

impl AlertFigures {
    /// Whether every threshold arrived exactly once both ways and the webhook p99 met the goal.
    pub fn goal_met(&self) -> bool {
        self.nats_counts.exact(self.expected)
            && self.webhook_counts.exact(self.expected)
            && self.bad_signatures == 0
            && self.webhook.p99_us <= GOAL_P99_US
    }

    pub fn to_markdown(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut s = format!(
            "\nspend alerts: {} customers × thresholds {:?} of {LIMIT} tool calls = {} crossings, {} crossings/s, last webhook {:.1} s after the first publish\n\n",
            self.customers, THRESHOLDS, self.expected, self.crossings_per_sec, self.elapsed_secs
        );
        s.push_str("| series | alerts | p50 | p99 | max |\n|---|---|---|---|---|\n");
        for l in [
            &self.nats,
            &self.webhook,
            &self.nats_from_publish,
            &self.webhook_from_publish,
        ] {
            s.push_str(&format!(
                "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                l.label,
                l.count,
                ms(l.p50_us),
                ms(l.p99_us),
                ms(l.max_us)
            ));
        }
        for (what, c) in [
            ("NATS alerts", &self.nats_counts),
            ("webhooks", &self.webhook_counts),
        ] {
            s.push_str(&format!(
                "\n{what}: {} distinct of {} expected, {} repeats, {} missing, {} not expected",
                c.distinct,
                self.expected,
                c.repeats,
                self.expected.saturating_sub(c.distinct),
                c.unexpected
            ));
        }
        s.push_str(&format!(
            "\nwebhooks with a bad signature: {}\ngoal (each threshold once, crossing to webhook p99 ≤ 2 s): {}\n",
            self.bad_signatures,
            if self.goal_met() { "met" } else { "NOT met" }
        ));
        s
    }
}

/// How often each expected id arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Expected ids that arrived at least once.
    pub distinct: u64,
    /// Arrivals of an id that had arrived before.
    pub repeats: u64,
    /// Arrivals of an id nobody expected.
    pub unexpected: u64,
}

impl Counts {
    /// Exactly once each of `expected`.
    pub fn exact(&self, expected: u64) -> bool {
        self.distinct == expected && self.repeats == 0 && self.unexpected == 0
    }
}

/// Counts arrivals once each: the first arrival of an expected id is kept, the rest counted.
#[derive(Debug, Default)]
pub struct Once<T> {
    expected: HashMap<String, Option<T>>,
    counts: Counts,
}

impl<T> Once<T> {
    /// Expects each of `ids` once.
    pub fn expecting(ids: impl IntoIterator<Item = String>) -> Once<T> {
        Once {
            expected: ids.into_iter().map(|id| (id, None)).collect(),
            counts: Counts::default(),
        }
    }

    /// One arrival of `id` carrying `value`; whether it was the first of an expected id.
    pub fn arrive(&mut self, id: &str, value: T) -> bool {
        match self.expected.get_mut(id) {
            None => {
                self.counts.unexpected += 1;
                false
            }
            Some(Some(_)) => {
                self.counts.repeats += 1;
                false
            }
            Some(slot) => {
                *slot = Some(value);
                self.counts.distinct += 1;
                true
            }
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts.clone()
    }

    /// The first arrival of each id that arrived.
    pub fn firsts(&self) -> impl Iterator<Item = (&str, &T)> {
        self.expected
            .iter()
            .filter_map(|(id, v)| v.as_ref().map(|v| (id.as_str(), v)))
    }
}

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadSignature {
    Malformed,
    Stale,
    Mismatch,
}

/// Checks `Tally-Signature: t=<secs>,v1=<hex>` over `body` as a customer's receiver would,
/// with its endpoint secret as printed by `tally-payments endpoint-secret` (hex text, used as
/// the HMAC key's bytes): HMAC-SHA256 of `"{t}.{body}"`, `t` within [`TOLERANCE_SECS`] of
/// `now_secs`. Returns `t`.
pub fn verify_signature(
    secret_hex: &str,
    header: &str,
    body: &[u8],
    now_secs: i64,
) -> Result<i64, BadSignature> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| BadSignature::Malformed)?),
            Some(("v1", v)) => v1.push(unhex(v).ok_or(BadSignature::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(BadSignature::Malformed)?;
    if v1.is_empty() {
        return Err(BadSignature::Malformed);
    }
    if now_secs.abs_diff(t) > TOLERANCE_SECS.unsigned_abs() {
        return Err(BadSignature::Stale);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret_hex.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    if v1
        .iter()
        .any(|sig| hmac::verify(&key, &signed, sig).is_ok())
    {
        Ok(t)
    } else {
        Err(BadSignature::Mismatch)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// Events per step: step `i` brings the quantity from the previous threshold's bound to
/// `ceil(limit × thresholds[i] / 100)`, so its last event crosses that threshold and no other.
pub fn steps(limit: u64, thresholds: &[u8]) -> Vec<u64> {
    let mut done = 0u64;
    let mut out = Vec::with_capacity(thresholds.len());
    for &t in thresholds {
        let bound = (limit * u64::from(t)).div_ceil(100);
        out.push(bound.saturating_sub(done));
        done = done.max(bound);
    }
    out
}

/// Percentiles of `values` (microseconds).
fn latency(label: &str, values: impl Iterator<Item = u64>) -> anyhow::Result<Latency> {
    let mut h = Histogram::<u64>::new(3)?;
    for v in values {
        h.record(v)?;
    }
    Ok(Latency::of(label.to_owned(), &h))
}

fn wall_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// One request the sink received.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    signature: String,
    notification_id: String,
    body: Bytes,
    at_us: i64,
}

type Hooks = Arc<Mutex<Vec<Hook>>>;

/// A plain-HTTP receiver answering 200 to everything, recording each request in full; it
/// serves until the returned task is aborted.
async fn sink() -> anyhow::Result<(u16, Hooks, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let got: Hooks = Arc::default();
    let g = got.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let g = g.clone();
            let service = hyper::service::service_fn(move |req| receive(req, g.clone()));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    Ok((port, got, server))
}

/// One webhook: recorded once its body is in, answered 200.
async fn receive(
    req: Request<hyper::body::Incoming>,
    got: Hooks,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let text = |n: &str| {
        parts.headers.get(n).map_or_else(String::new, |v| {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        })
    };
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let hook = Hook {
        path: parts.uri.path().to_owned(),
        signature: text("tally-signature"),
        notification_id: text("tally-notification-id"),
        body,
        at_us: wall_us(),
    };
    got.lock().unwrap_or_else(|p| p.into_inner()).push(hook);
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// One alert as the subscriber got it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    crossed_at_ms: i64,
    at_us: i64,
}

fn customer(i: usize) -> String {
    format!("alert{i:04}")
}

/// The whole scenario: `customers` customers, their crossings published at
/// `crossings_per_sec`.
pub async fn run(customers: usize, crossings_per_sec: u64) -> anyhow::Result<AlertFigures> {
    anyhow::ensure!(customers > 0, "no customers");
    let env = TestEnv::new("bench_spend_alerts").await;
    bootstrap_catalog(&env).await?;
    let db = env.db();
    let names: Vec<String> = (0..customers).map(customer).collect();
    for c in &names {
        let b = Budget {
            customer: c.clone(),
            budget_id: BUDGET.into(),
            agent: None,
            meter: Some("tool_calls".into()),
            kind: Kind::Quantity,
            limit: Decimal::from(LIMIT),
            thresholds: THRESHOLDS.to_vec(),
            hard: false,
        };
        budget::put(&db, &b.validated()?, false, "bench", now_ms()).await?;
    }
    let cfg = spend_config(&env);

    // the sink and the payments deliverer
    let (port, hooks, sink_server) = sink().await?;
    let master = tally_platform::secrets::generate_hex(32)
        .map_err(|_| anyhow::anyhow!("no random secret"))?;
    let dunning = DunningConfig {
        signing_secret: SecretString::new(&master),
        endpoints: names
            .iter()
            .map(|c| (c.clone(), format!("http://127.0.0.1:{port}/hooks/{c}")))
            .collect::<BTreeMap<_, _>>(),
        ..DunningConfig::default()
    };
    dunning.validate(Profile::Dev)?;
    let payments_stop = Shutdown::new();
    let source = AlertsSource::new(
        &env.nats,
        &PaymentsConfig {
            spend_subject_root: cfg.subject_root.clone(),
            ..PaymentsConfig::default()
        },
    );
    let client = async_nats::connect(&env.nats.url).await?;
    let deliverer =
        Deliverer::new(env.db(), dunning, payments_stop.clone()).map_err(|e| anyhow::anyhow!(e))?;
    let payments = tokio::spawn(spend_alerts::run(
        async_nats::jetstream::new(client.clone()),
        source.clone(),
        deliverer,
        payments_stop.clone(),
    ));

    // the NATS subscriber, as a customer's service would listen
    let mut sub = client.subscribe(source.filter_subject()).await?;
    let alerts: Arc<Mutex<Vec<(String, Seen)>>> = Arc::default();
    let listener = {
        let alerts = alerts.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let at_us = wall_us();
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) else {
                    continue;
                };
                let (Some(id), Some(crossed_at_ms)) =
                    (v["alert_id"].as_str(), v["crossed_at_ms"].as_i64())
                else {
                    continue;
                };
                let seen = Seen {
                    crossed_at_ms,
                    at_us,
                };
                alerts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((id.to_owned(), seen));
            }
        })
    };

    let pipeline = Pipeline::start(&env, &cfg).await?;
    let sdk = SpendClient::new(
        client.clone(),
        &cfg.subject_root,
        Duration::from_secs(5),
        FailurePolicy::Closed,
    );
    Pipeline::ready(&sdk, &CustomerId::new(customer(0))?).await?;

    // the usage, one customer's step per tick
    let js = async_nats::jetstream::new(client.clone());
    let published: Arc<Mutex<HashMap<(String, u8), i64>>> = Arc::default();
    let every = Duration::from_nanos(1_000_000_000 / crossings_per_sec.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (step, (&threshold, &n)) in THRESHOLDS
        .iter()
        .zip(&steps(LIMIT, &THRESHOLDS))
        .enumerate()
    {
        for c in &names {
            tick.tick().await;
            let (js, c, prefix, published) = (
                js.clone(),
                c.clone(),
                env.nats.subject_prefix.clone(),
                published.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for k in 0..n {
                    let id = format!("s{step}e{k}");
                    let e = tool_call(&c, "bot", 0)?;
                    let e = tally_ingest::OutgoingEvent {
                        id: tally_domain::EventId::new(id.clone())?,
                        ..e
                    };
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(
                        "Nats-Msg-Id",
                        tally_domain::nats_msg_id(&c, "bot", &id).as_str(),
                    );
                    if k + 1 == n {
                        published
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert((c.clone(), threshold), wall_us());
                    }
                    js.publish_with_headers(format!("{prefix}.{c}.bot"), h, e.to_json().into())
                        .await?
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }

    // wait for every webhook (or a minute without progress), then a little for repeats
    let expected = (customers * THRESHOLDS.len()) as u64;
    let (mut last, mut since) = (0usize, Instant::now());
    loop {
        let n = hooks.lock().unwrap_or_else(|p| p.into_inner()).len();
        if n as u64 >= expected || since.elapsed() > Duration::from_secs(60) {
            break;
        }
        if n != last {
            (last, since) = (n, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;

    payments_stop.cancel();
    let _ = payments.await;
    sink_server.abort();
    listener.abort();
    pipeline.stop(&env, client).await;
    env.cleanup().await;

    // the alerts, once each
    let published = published.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let alerts = alerts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let hooks = hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // the alert id carries the period start, which only the decider knows: expect by prefix
    let key_of = |alert_id: &str| -> Option<(String, u8)> {
        let (c, rest) = alert_id.split_once('.')?;
        let (_, threshold) = rest.rsplit_once('.')?;
        let budget = rest.split_once('.')?.0;
        (budget == BUDGET).then_some(())?;
        Some((c.to_owned(), threshold.parse().ok()?))
    };
    let expected_keys = || {
        names
            .iter()
            .flat_map(|c| THRESHOLDS.iter().map(move |t| format!("{c}.{t}")))
    };
    let mut nats_once = Once::<Seen>::expecting(expected_keys());
    for (id, seen) in &alerts {
        let key = key_of(id).map_or_else(|| id.clone(), |(c, t)| format!("{c}.{t}"));
        nats_once.arrive(&key, *seen);
    }
    let crossed: HashMap<String, i64> = nats_once
        .firsts()
        .map(|(k, s)| (k.to_owned(), s.crossed_at_ms))
        .collect();
    let mut hook_once = Once::<i64>::expecting(expected_keys());
    let mut bad_signatures = 0u64;
    let mut crossed_in_hook: HashMap<String, i64> = HashMap::new();
    for h in &hooks {
        let Some(c) = h.path.strip_prefix("/hooks/") else {
            bad_signatures += 1;
            continue;
        };
        let secret = deliver::endpoint_secret_hex(&master, c);
        if verify_signature(&secret, &h.signature, &h.body, h.at_us / 1_000_000).is_err() {
            bad_signatures += 1;
            continue;
        }
        let body: serde_json::Value = serde_json::from_slice(&h.body).unwrap_or_default();
        let alert_id = body["data"]["alert_id"].as_str().unwrap_or_default();
        let consistent = body["data"]["customer"].as_str() == Some(c)
            && body["id"].as_str() == Some(h.notification_id.as_str())
            && h.notification_id == spend_alerts::notification_id(alert_id);
        let key = match key_of(alert_id) {
            Some((hc, t)) if consistent && hc == c => format!("{c}.{t}"),
            _ => format!("unexpected:{}", h.notification_id),
        };
        if hook_once.arrive(&key, h.at_us) {
            if let Some(x) = body["data"]["crossed_at_ms"].as_i64() {
                crossed_in_hook.insert(key, x);
            }
        }
    }
    let since =
        |from_us: i64, to_us: i64| u64::try_from(to_us.saturating_sub(from_us)).unwrap_or(0);
    let publish_of = |key: &str| {
        let (c, t) = key.rsplit_once('.')?;
        published.get(&(c.to_owned(), t.parse().ok()?)).copied()
    };
    let nats_lat = nats_once
        .firsts()
        .map(|(_, s)| since(s.crossed_at_ms * 1000, s.at_us));
    let hook_lat = hook_once.firsts().filter_map(|(k, at)| {
        let c = crossed_in_hook.get(k).or_else(|| crossed.get(k))?;
        Some(since(c * 1000, *at))
    });
    let nats_pub = nats_once
        .firsts()
        .filter_map(|(k, s)| Some(since(publish_of(k)?, s.at_us)));
    let hook_pub = hook_once
        .firsts()
        .filter_map(|(k, at)| Some(since(publish_of(k)?, *at)));
    Ok(AlertFigures {
        customers,
        crossings_per_sec,
        expected,
        nats: latency(
            "crossing (decider's crossed_at_ms) → NATS alert received",
            nats_lat,
        )?,
        webhook: latency(
            "crossing (decider's crossed_at_ms) → webhook received",
            hook_lat,
        )?,
        nats_from_publish: latency("usage event published → NATS alert received", nats_pub)?,
        webhook_from_publish: latency("usage event published → webhook received", hook_pub)?,
        nats_counts: nats_once.counts(),
        webhook_counts: hook_once.counts(),
        bad_signatures,
        elapsed_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_payments::signature;

    #[test]
    fn a_webhook_signed_by_payments_verifies_with_its_customers_secret_only() {
        let master = "m".repeat(64);
        let body = br#"{"id":"spend.threshold_crossed:a.b.1.50"}"#;
        let secret = deliver::endpoint_secret_hex(&master, "acme");
        let header = signature::header(&deliver::endpoint_secret(&master, "acme"), 1_000, body);
        assert_eq!(verify_signature(&secret, &header, body, 1_010), Ok(1_000));
        let other = deliver::endpoint_secret_hex(&master, "globex");
        assert_eq!(
            verify_signature(&other, &header, body, 1_010),
            Err(BadSignature::Mismatch)
        );
        assert_eq!(
            verify_signature(&secret, &header, b"{\"id\":\"x\"}", 1_010),
            Err(BadSignature::Mismatch)
        );
        assert_eq!(
            verify_signature(&secret, &header, body, 1_301),
            Err(BadSignature::Stale)
        );
        assert_eq!(
            verify_signature(&secret, "t=1000", body, 1_000),
            Err(BadSignature::Malformed)
        );
        assert_eq!(
            verify_signature(&secret, "v1=00", body, 1_000),
            Err(BadSignature::Malformed)
        );
    }

    #[test]
    fn each_id_counts_once_and_the_rest_is_told_apart() {
        let mut once = Once::<u32>::expecting(["a".to_owned(), "b".to_owned(), "c".to_owned()]);
        assert!(once.arrive("a", 1));
        assert!(!once.arrive("a", 2));
        assert!(once.arrive("b", 3));
        assert!(!once.arrive("z", 4));
        let c = once.counts();
        assert_eq!(
            c,
            Counts {
                distinct: 2,
                repeats: 1,
                unexpected: 1
            }
        );
        assert!(!c.exact(3));
        let mut firsts: Vec<(&str, u32)> = once.firsts().map(|(k, v)| (k, *v)).collect();
        firsts.sort();
        assert_eq!(firsts, vec![("a", 1), ("b", 3)]);
        assert!(Counts {
            distinct: 3,
            ..Counts::default()
        }
        .exact(3));
    }

    #[test]
    fn each_step_crosses_one_threshold() {
        assert_eq!(steps(10, &[50, 80, 100]), vec![5, 3, 2]);
        // 7 × 50 % = 3.5: the fourth call crosses
        assert_eq!(steps(7, &[50, 100]), vec![4, 3]);
    }
}
