//! Live spend control (issue 15's benchmark), on the local stack, one decider in process:
//!
//! - **authorize + settle pairs** on one hot customer (a hard budget far from its limit):
//!   an authorize, then the release of its hold, over NATS request/reply; latency of each
//!   request (round trip through the local NATS server: the server-side time plus two loopback
//!   hops) in hdrhistograms at fixed rates of pairs per second, and the largest rate 64
//!   concurrent clients reach; next to it the **server-side** latency of the same requests,
//!   the decider's own `tally_spend_decision_seconds` (from the request's receipt to its
//!   answer being sent, the journal's acknowledgement included) captured in process. Baseline
//!   in the same run: the round trip of a request a trivial responder answers at once (NATS
//!   alone).
//! - **freshness**: an aggregator commits background load (synthetic events of other
//!   customers at a fixed rate) while a probe customer sends one event at a time; time from
//!   the publish until the decider's balance shows it.
//! - **false denials** under a mixed load with cancellations: requests of random size against a
//!   budget, half given back at once; a denial of a request the client's own account of the
//!   outstanding holds says fits is a false denial (a leaked or double-counted hold).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use tally_domain::{AgentId, CustomerId, EventId};
use tally_ingest::spend::{AuthorizeRequest, FailurePolicy, SpendClient};
use tally_ingest::OutgoingEvent;
use tally_platform::clock::now_ms;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_rater::live::budget::{self, Budget, Kind};
use tally_rater::live::run::{self, Spend};
use tally_rater::live::SpendConfig;
use tally_rater::store::CatalogSource;
use tally_rater::RaterConfig;

/// Latency percentiles of one series, microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub label: String,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub(crate) fn of(label: String, h: &Histogram<u64>) -> Latency {
        Latency {
            label,
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

/// The deciders' decision latency (`tally_spend_decision_seconds`) of one operation, in
/// microseconds.
#[derive(Default)]
struct OpTap {
    hist: Mutex<Option<Histogram<u64>>>,
}

impl metrics::HistogramFn for OpTap {
    fn record(&self, seconds: f64) {
        if let Ok(mut h) = self.hist.lock() {
            if let Some(h) = h.as_mut() {
                let _ = h.record((seconds * 1e6) as u64);
            }
        }
    }
}

/// A metrics recorder that keeps the decision histograms of authorize and release and
/// ignores the rest.
#[derive(Default)]
struct ServerSide {
    authorize: Arc<OpTap>,
    release: Arc<OpTap>,
}

impl ServerSide {
    /// The recorder installed for this process (`None`: another recorder was installed first).
    fn installed() -> Option<&'static Arc<ServerSide>> {
        static TAP: OnceLock<Option<Arc<ServerSide>>> = OnceLock::new();
        TAP.get_or_init(|| {
            let tap = Arc::new(ServerSide::default());
            metrics::set_global_recorder(Tap(tap.clone()))
                .ok()
                .map(|()| tap)
        })
        .as_ref()
    }

    /// Starts new series.
    fn reset(&self) {
        for t in [&self.authorize, &self.release] {
            if let Ok(mut h) = t.hist.lock() {
                *h = Histogram::new(3).ok();
            }
        }
    }

    /// The series since the last reset: (authorize, release).
    fn take(&self) -> Option<(Histogram<u64>, Histogram<u64>)> {
        let take = |t: &OpTap| t.hist.lock().ok().and_then(|mut h| h.take());
        Some((take(&self.authorize)?, take(&self.release)?))
    }
}

/// The recorder: the decision histogram of authorize and release goes to the tap.
struct Tap(Arc<ServerSide>);

impl metrics::Recorder for Tap {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        let op = key
            .labels()
            .find(|l| l.key() == "op")
            .map(|l| l.value().to_owned());
        match (key.name(), op.as_deref()) {
            ("tally_spend_decision_seconds", Some("authorize")) => {
                metrics::Histogram::from_arc(self.0.authorize.clone())
            }
            ("tally_spend_decision_seconds", Some("release")) => {
                metrics::Histogram::from_arc(self.0.release.clone())
            }
            _ => metrics::Histogram::noop(),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct SpendFigures {
    pub baseline: Vec<Latency>,
    pub pairs: Vec<Latency>,
    /// The same requests as `pairs`, server side (empty without the in-process recorder).
    pub server: Vec<Latency>,
    pub max_pairs_per_sec: f64,
    pub max_baseline_per_sec: f64,
    pub freshness: Latency,
    pub background_events_per_sec: u64,
    pub mixed_requests: u64,
    pub mixed_fits: u64,
    pub false_denials: u64,
}

impl SpendFigures {
    pub fn to_markdown(&self) -> String {
        let mut s =
            String::from("| series | requests | p50 | p99 | max |\n|---|---|---|---|---|\n");
        for l in self.baseline.iter().chain(&self.pairs).chain(&self.server) {
            s.push_str(&format!(
                "| {} | {} | {} µs | {} µs | {} µs |\n",
                l.label, l.count, l.p50_us, l.p99_us, l.max_us
            ));
        }
        s.push_str(&format!(
            "\nmost pairs/s (64 clients): {:.0} (NATS request/reply alone: {:.0} requests/s, {:.2} of it in requests)\n",
            self.max_pairs_per_sec,
            self.max_baseline_per_sec,
            2.0 * self.max_pairs_per_sec / self.max_baseline_per_sec.max(1.0)
        ));
        s.push_str(&format!(
            "freshness (publish to live balance) with {} events/s in the background: {} probes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
            self.background_events_per_sec,
            self.freshness.count,
            self.freshness.p50_us as f64 / 1000.0,
            self.freshness.p99_us as f64 / 1000.0,
            self.freshness.max_us as f64 / 1000.0
        ));
        s.push_str(&format!(
            "false denials: {} of {} requests that fit ({} requests, half cancelled)\n",
            self.false_denials, self.mixed_fits, self.mixed_requests
        ));
        s
    }
}

const PLAN: &str = r#"
[[plans]]
id = "bench"
version = 1
currency = "USD"
effective_from = "2020-01-01T00:00:00Z"
prices = [
  { model = "per_unit", meter = "llm_tokens", unit_price = "0.000003" },
  { model = "per_unit", meter = "tool_calls", unit_price = "0.01" },
]
"#;

fn meter_specs() -> Vec<tally_domain::meter::MeterSpec> {
    serde_json::from_value(serde_json::json!([
        {"slug": "llm_tokens", "event_type": "llm.tokens", "aggregation": "SUM",
         "value_property": "$.tokens", "group_by": {"model": "$.model", "kind": "$.kind"}},
        {"slug": "tool_calls", "event_type": "tool.call", "aggregation": "COUNT", "group_by": {"tool": "$.tool"}}
    ]))
    .expect("meter specs")
}

fn id(s: &str) -> anyhow::Result<CustomerId> {
    Ok(CustomerId::new(s)?)
}

/// The benchmark's meters and its plan (`bench`, every customer's default plan).
pub(crate) async fn bootstrap_catalog(env: &TestEnv) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<tally_rater::config::PlanSpec>,
    }
    let plans = toml::from_str::<F>(PLAN)?.plans;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &meter_specs(), 0).await?;
    tally_rater::store::catalog::bootstrap(&db, &plans, &[], 0).await?;
    Ok(())
}

async fn setup(env: &TestEnv) -> anyhow::Result<()> {
    bootstrap_catalog(env).await?;
    let db = env.db();
    let put = |c: &str, limit: &str| Budget {
        customer: c.into(),
        budget_id: "b".into(),
        agent: None,
        meter: Some("tool_calls".into()),
        kind: Kind::Quantity,
        limit: limit.parse().expect("limit"),
        thresholds: vec![],
        hard: true,
    };
    budget::put(
        &db,
        &put("hot", "1000000000000").validated()?,
        false,
        "bench",
        now_ms(),
    )
    .await?;
    budget::put(
        &db,
        &put("mixed", "100").validated()?,
        false,
        "bench",
        now_ms(),
    )
    .await?;
    Ok(())
}

pub(crate) fn spend_config(env: &TestEnv) -> SpendConfig {
    SpendConfig {
        subject_root: format!("{}_spend", env.nats.subject_prefix),
        lease_secs: 2,
        refresh_secs: 5,
        ..SpendConfig::default()
    }
}

/// Pairs at `rate` per second for `secs`: each an authorize then a release.
async fn pairs_at(sdk: &Arc<SpendClient>, rate: u64, secs: u64) -> anyhow::Result<Histogram<u64>> {
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let (c, a) = (id("hot")?, AgentId::new("bot")?);
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        let (sdk, c, a, hist) = (sdk.clone(), c.clone(), a.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ans = sdk
                .authorize(&c, &a, &AuthorizeRequest::new("tool_calls", Decimal::ONE))
                .await;
            let took = t.elapsed();
            let Ok(ans) = ans else { return };
            let t = Instant::now();
            if let Some(h) = ans.hold_id {
                let _ = sdk.release(&c, &a, &h).await;
            }
            let took2 = t.elapsed();
            if let Ok(mut h) = hist.lock() {
                let _ = h.record(took.as_micros() as u64);
                let _ = h.record(took2.as_micros() as u64);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    Ok(h)
}

/// Plain request/reply at `rate` per second against a responder that answers at once.
async fn echo_at(
    client: &async_nats::Client,
    subject: &str,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Histogram<u64>> {
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        let (client, subject, hist) = (client.clone(), subject.to_owned(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            if client.request(subject, "{}".into()).await.is_ok() {
                if let Ok(mut h) = hist.lock() {
                    let _ = h.record(t.elapsed().as_micros() as u64);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    Ok(h)
}

/// Closed loop: `clients` each doing `f` until `secs` pass; operations per second.
async fn closed_loop<F, Fut>(clients: usize, secs: u64, f: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let end = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                f().await;
                n += 1;
            }
            n
        }));
    }
    let mut total = 0u64;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

pub(crate) fn tool_call(customer: &str, agent: &str, n: u64) -> anyhow::Result<OutgoingEvent> {
    Ok(OutgoingEvent {
        id: EventId::new(format!("e{n}"))?,
        customer: CustomerId::new(customer)?,
        agent: AgentId::new(agent)?,
        event_type: "tool.call".into(),
        time: chrono::Utc::now(),
        data: serde_json::json!({"tool": "search"}),
        hold_id: None,
    })
}

/// Publish-to-balance latency of `probes` single events, with `load` events/s of others.
async fn freshness(
    env: &TestEnv,
    sdk: &SpendClient,
    probes: usize,
    load: u64,
) -> anyhow::Result<Histogram<u64>> {
    let client = async_nats::connect(&env.nats.url).await?;
    let js = async_nats::jetstream::new(client);
    let stop = Shutdown::new();
    let background = {
        let (js, prefix, stop) = (js.clone(), env.nats.subject_prefix.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.is_cancelled() {
                tick.tick().await;
                let mut acks = Vec::new();
                for _ in 0..(load / 100).max(1) {
                    n += 1;
                    let c = format!("load{}", n % 100);
                    let Ok(e) = tool_call(&c, "bot", n) else {
                        continue;
                    };
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(
                        "Nats-Msg-Id",
                        tally_domain::nats_msg_id(&c, "bot", &format!("e{n}")).as_str(),
                    );
                    if let Ok(ack) = js
                        .publish_with_headers(format!("{prefix}.{c}.bot"), h, e.to_json().into())
                        .await
                    {
                        acks.push(ack);
                    }
                }
                for a in acks {
                    let _ = a.await;
                }
            }
        })
    };
    let mut hist = Histogram::<u64>::new(3)?;
    let probe = id("probe")?;
    let mut seen = 0u64;
    for i in 0..probes {
        let e = tool_call("probe", "bot", 1_000_000_000 + i as u64)?;
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            "Nats-Msg-Id",
            tally_domain::nats_msg_id("probe", "bot", e.id.as_ref()).as_str(),
        );
        let t = Instant::now();
        js.publish_with_headers(
            format!("{}.probe.bot", env.nats.subject_prefix),
            h,
            e.to_json().into(),
        )
        .await?
        .await?;
        loop {
            let b = sdk.balance(&probe).await?;
            let q = b
                .as_ref()
                .and_then(|b| {
                    b["meters"]["tool_calls"]["quantity"]
                        .as_str()
                        .map(str::to_owned)
                })
                .and_then(|q| q.parse::<u64>().ok())
                .unwrap_or(0);
            if q > seen {
                seen = q;
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("probe {i} not in the balance within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        hist.record(t.elapsed().as_micros() as u64)?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let _ = background.await;
    Ok(hist)
}

/// Mixed requests against a budget of 100 calls; returns (requests, that fit, false denials).
async fn mixed(sdk: &SpendClient, requests: u64) -> anyhow::Result<(u64, u64, u64)> {
    let (c, a) = (id("mixed")?, AgentId::new("bot")?);
    let mut outstanding: Vec<(String, u64)> = Vec::new();
    let (mut fits, mut false_denials) = (0u64, 0u64);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..requests {
        let q = 1 + next() % 20;
        let held: u64 = outstanding.iter().map(|(_, q)| q).sum();
        let fit = held + q <= 100;
        let ans = sdk
            .authorize(
                &c,
                &a,
                &AuthorizeRequest::new("tool_calls", Decimal::from(q)),
            )
            .await?;
        if fit {
            fits += 1;
            if !ans.allow {
                false_denials += 1;
            }
        }
        if let Some(h) = ans.hold_id {
            outstanding.push((h, q));
        }
        // cancel half of the outstanding work at random
        if next() % 2 == 0 && !outstanding.is_empty() {
            let i = (next() % outstanding.len() as u64) as usize;
            let (h, _) = outstanding.swap_remove(i);
            sdk.release(&c, &a, &h).await?;
        }
    }
    for (h, _) in outstanding {
        sdk.release(&c, &a, &h).await?;
    }
    Ok((requests, fits, false_denials))
}

/// An aggregator committing the usage stream and one spend decider, in process.
pub(crate) struct Pipeline {
    stop: Shutdown,
    agg_stop: Shutdown,
    decider: tokio::task::JoinHandle<Result<(), tally_rater::live::run::RunError>>,
    aggregator: tokio::task::JoinHandle<Result<(), tally_aggregator::RunError>>,
}

impl Pipeline {
    /// Starts both over `env` (the `bench` plan every customer's default).
    pub(crate) async fn start(env: &TestEnv, cfg: &SpendConfig) -> anyhow::Result<Pipeline> {
        let stop = Shutdown::new();
        let agg_stop = Shutdown::new();
        let aggregator = {
            let client = async_nats::connect(&env.nats.url).await?;
            let (db, nats_cfg, stop) = (env.db(), env.nats.clone(), agg_stop.clone());
            let meters = tally_domain::meter::validate_meters(meter_specs())?;
            let acfg = tally_aggregator::AggregatorConfig {
                batch_max_wait_ms: 100,
                ..tally_aggregator::AggregatorConfig::default()
            };
            tokio::spawn(async move {
                tally_aggregator::run(client, db, &nats_cfg, &acfg, meters, stop).await
            })
        };
        let spend = Spend {
            db: env.db(),
            nats: async_nats::connect(&env.nats.url).await?,
            nats_cfg: env.nats.clone(),
            cfg: cfg.clone(),
            source: CatalogSource {
                rater: RaterConfig {
                    default_plan: Some("bench".into()),
                    ..RaterConfig::default()
                },
                features: tally_platform::Features::default(),
            },
            now_ms,
        };
        let decider = {
            let stop = stop.clone();
            tokio::spawn(async move { run::run(spend, stop).await })
        };
        Ok(Pipeline {
            stop,
            agg_stop,
            decider,
            aggregator,
        })
    }

    /// Waits until the decider answers a balance request for `customer` (at most a minute).
    pub(crate) async fn ready(sdk: &SpendClient, customer: &CustomerId) -> anyhow::Result<()> {
        let ready = Instant::now();
        while sdk.balance(customer).await?.is_none() {
            anyhow::ensure!(
                ready.elapsed() < Duration::from_secs(60),
                "the decider did not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops both and deletes the decider's streams and buckets (`env.cleanup` deletes the rest).
    pub(crate) async fn stop(self, env: &TestEnv, client: async_nats::Client) {
        self.stop.cancel();
        let _ = self.decider.await;
        self.agg_stop.cancel();
        let _ = self.aggregator.await;
        let js = async_nats::jetstream::new(client);
        for name in ["_HOLDS", "_ALERTS", "_SPEND", "_SPEND_ALERTS"] {
            let s = format!("{}{name}", env.nats.stream);
            let _ = js.delete_stream(&s).await;
            let _ = js.delete_stream(format!("KV_{s}")).await;
        }
    }
}

/// The whole scenario: `secs` per fixed rate, `probes` freshness probes over `load`
/// background events/s, `mixed_requests` of the mixed load.
pub async fn run(
    secs: u64,
    probes: usize,
    load: u64,
    mixed_requests: u64,
) -> anyhow::Result<SpendFigures> {
    let env = TestEnv::new("bench_spend").await;
    setup(&env).await?;
    let cfg = spend_config(&env);
    let pipeline = Pipeline::start(&env, &cfg).await?;
    let client = async_nats::connect(&env.nats.url).await?;
    let sdk = Arc::new(SpendClient::new(
        client.clone(),
        &cfg.subject_root,
        Duration::from_secs(5),
        FailurePolicy::Closed,
    ));
    let hot = id("hot")?;
    Pipeline::ready(&sdk, &hot).await?;
    // the baseline responder
    let echo_subject = format!("{}_echo", env.nats.subject_prefix);
    let mut sub = client.subscribe(echo_subject.clone()).await?;
    let responder = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(r) = m.reply {
                    let _ = client.publish(r, "{}".into()).await;
                }
            }
        })
    };
    let mut baseline = Vec::new();
    let mut pairs = Vec::new();
    let mut server = Vec::new();
    let tap = ServerSide::installed();
    for rate in [1000u64, 5000] {
        let h = echo_at(&client, &echo_subject, 2 * rate, secs).await?;
        baseline.push(Latency::of(
            format!("NATS request/reply alone, {} req/s", 2 * rate),
            &h,
        ));
        if let Some(t) = tap {
            t.reset();
        }
        let h = pairs_at(&sdk, rate, secs).await?;
        pairs.push(Latency::of(
            format!("authorize + release, {rate} pairs/s"),
            &h,
        ));
        if let Some((authorize, release)) = tap.and_then(|t| t.take()) {
            server.push(Latency::of(
                format!("server side: authorize (receipt to answer, hold stored), {rate} pairs/s"),
                &authorize,
            ));
            server.push(Latency::of(
                format!("server side: release (receipt to answer), {rate} pairs/s"),
                &release,
            ));
        }
    }
    let max_baseline_per_sec = {
        let (client, subject) = (client.clone(), echo_subject.clone());
        closed_loop(64, secs, move || {
            let (client, subject) = (client.clone(), subject.clone());
            async move {
                let _ = client.request(subject, "{}".into()).await;
            }
        })
        .await
    };
    let max_pairs_per_sec = {
        let (sdk, c, a) = (sdk.clone(), hot.clone(), AgentId::new("bot")?);
        closed_loop(64, secs, move || {
            let (sdk, c, a) = (sdk.clone(), c.clone(), a.clone());
            async move {
                if let Ok(ans) = sdk
                    .authorize(&c, &a, &AuthorizeRequest::new("tool_calls", Decimal::ONE))
                    .await
                {
                    if let Some(h) = ans.hold_id {
                        let _ = sdk.release(&c, &a, &h).await;
                    }
                }
            }
        })
        .await
    };
    let fresh = freshness(&env, &sdk, probes, load).await?;
    let (mixed_requests, mixed_fits, false_denials) = mixed(&sdk, mixed_requests).await?;
    responder.abort();
    pipeline.stop(&env, client).await;
    env.cleanup().await;
    Ok(SpendFigures {
        baseline,
        pairs,
        server,
        max_pairs_per_sec,
        max_baseline_per_sec,
        freshness: Latency::of("freshness".into(), &fresh),
        background_events_per_sec: load,
        mixed_requests,
        mixed_fits,
        false_denials,
    })
}
