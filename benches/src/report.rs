//! The benchmark report: every scenario of the benchmarks issue in one run, each next to a
//! baseline measured in the same run, written as markdown and JSON (`tally-bench report`).
//!
//! Scenarios: end-to-end throughput, latency to `v_usage`, aggregator CPU, dedup memory,
//! rater, invoicer, ClickHouse insert. Every scenario that needs servers uses its own streams
//! and database ([`TestEnv`]) and removes them afterwards; this module never touches other
//! data and never decides anything from a figure (met/missed is only reported).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;

use serde_json::{json, Value};
use tally_platform::testkit::TestEnv;

use crate::{aggregator_cpu, insert, invoicing, pipeline, rating};

/// How big each scenario runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizes {
    pub cpu_events: usize,
    pub cpu_batch: usize,
    pub dedup_ids: usize,
    pub e2e_events: usize,
    pub e2e_rounds: usize,
    /// Alternating passes of the CPU scenario; the best of each is reported.
    pub cpu_rounds: usize,
    pub duplicate_share: f64,
    pub latency_events: usize,
    pub rating_rows: usize,
    pub rating_customers: usize,
    pub invoicer_customers: usize,
    pub invoicer_meters: usize,
    pub insert_events: usize,
    pub insert_batch: usize,
}

impl Sizes {
    /// The sizes of the issue (what docs/BENCHMARKS.md reports).
    pub fn full() -> Sizes {
        Sizes {
            cpu_events: 1_000_000,
            cpu_batch: 5000,
            dedup_ids: 1_000_000,
            e2e_events: 200_000,
            e2e_rounds: 3,
            cpu_rounds: 3,
            duplicate_share: 0.05,
            latency_events: 20_000,
            rating_rows: 1_000_000,
            rating_customers: 1000,
            invoicer_customers: 10_000,
            invoicer_meters: 10,
            insert_events: 200_000,
            insert_batch: 20_000,
        }
    }

    /// Everything small: checks the harness end to end in well under two minutes, even in a
    /// debug build. Its figures say nothing about performance.
    pub fn quick() -> Sizes {
        Sizes {
            cpu_events: 20_000,
            cpu_batch: 2000,
            dedup_ids: 50_000,
            e2e_events: 4000,
            e2e_rounds: 1,
            cpu_rounds: 1,
            duplicate_share: 0.05,
            latency_events: 1000,
            rating_rows: 20_000,
            rating_customers: 100,
            invoicer_customers: 200,
            invoicer_meters: 10,
            insert_events: 4000,
            insert_batch: 1000,
        }
    }
}

/// Which way a ratio is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One scenario's row of the report.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub id: &'static str,
    pub title: String,
    pub unit: &'static str,
    pub baseline_label: String,
    pub baseline: f64,
    pub ours_label: String,
    pub ours: f64,
    better: Better,
    /// What the target applies to, its text and whether it was met (`None`: no target).
    pub target: String,
    pub met: Option<bool>,
    /// Latency or per-batch percentiles, name to milliseconds (or microseconds, see name).
    pub percentiles: Vec<(String, f64)>,
    pub seconds: f64,
}

impl Scenario {
    /// ours / baseline.
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            0.0
        } else {
            self.ours / self.baseline
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "baseline": {"label": self.baseline_label, "value": self.baseline},
            "ours": {"label": self.ours_label, "value": self.ours},
            "ratio": self.ratio(),
            "ratio_is": "ours / baseline",
            "better": match self.better { Better::Higher => "higher", Better::Lower => "lower" },
            "target": self.target,
            "met": self.met,
            "percentiles": self.percentiles.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "seconds": self.seconds,
        })
    }
}

/// The whole run.
pub struct Report {
    pub quick: bool,
    pub sizes: Sizes,
    pub machine: Value,
    pub scenarios: Vec<Scenario>,
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        let n = v.round() as i64;
        let s = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 {
            format!("-{out}")
        } else {
            out
        }
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "sizes": self.sizes,
            "machine": self.machine,
            "scenarios": self.scenarios.iter().map(Scenario::to_json).collect::<Vec<_>>(),
        })
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Tally benchmark report\n");
        if self.quick {
            let _ = writeln!(
                md,
                "**Quick mode**: every scenario ran at a tiny size to check the harness; these figures say nothing about performance.\n"
            );
        }
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Started {} UTC, {:.0} s. Machine: {} ({} cores), {} MiB RAM; load average before {}, after {}. NATS {}, ClickHouse {}, build {}.\n",
            m["started"].as_str().unwrap_or("?"),
            m["seconds"].as_f64().unwrap_or(0.0),
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["memory_mib"],
            m["load_before"].as_str().unwrap_or("?"),
            m["load_after"].as_str().unwrap_or("?"),
            m["nats"].as_str().unwrap_or("?"),
            m["clickhouse"].as_str().unwrap_or("?"),
            m["build"].as_str().unwrap_or("?"),
        );
        let _ = writeln!(
            md,
            "| # | scenario | unit | baseline (same run) | ours | ratio ours/baseline | target | met? |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for (i, s) in self.scenarios.iter().enumerate() {
            let met = match s.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "no target",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {}: {} | {}: {} | {:.3} | {} | {} |",
                i + 1,
                s.title,
                s.unit,
                s.baseline_label,
                fmt_num(s.baseline),
                s.ours_label,
                fmt_num(s.ours),
                s.ratio(),
                s.target,
                met
            );
        }
        let _ = writeln!(md, "\n## Percentiles (hdrhistogram)\n");
        for s in self.scenarios.iter().filter(|s| !s.percentiles.is_empty()) {
            let list = s
                .percentiles
                .iter()
                .map(|(k, v)| format!("{k} {}", fmt_num(*v)))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(md, "- {}: {list}", s.title);
        }
        let _ = writeln!(
            md,
            "\n## Sizes\n\n```json\n{}\n```",
            serde_json::to_string_pretty(&self.sizes).unwrap_or_default()
        );
        md
    }

    /// Writes `report.md` and `report.json` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let md = dir.join("report.md");
        let js = dir.join("report.json");
        std::fs::write(&md, self.to_markdown())?;
        std::fs::write(&js, serde_json::to_string_pretty(&self.to_json())?)?;
        Ok((md, js))
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

async fn server_versions(env: &TestEnv) -> (String, String) {
    let nats = match async_nats::connect(&env.nats.url).await {
        Ok(c) => c.server_info().version,
        Err(_) => "?".into(),
    };
    let clickhouse = env
        .db()
        .query("SELECT version()")
        .fetch_one::<String>()
        .await
        .unwrap_or_else(|_| "?".into());
    (nats, clickhouse)
}

/// Runs every scenario at `sizes` and returns the report; progress goes to stderr.
pub fn run(sizes: Sizes, quick: bool) -> anyhow::Result<Report> {
    let started_at = chrono::Utc::now();
    let started = Instant::now();
    let load_before = load_average();
    let rt = tokio::runtime::Runtime::new()?;
    let mut scenarios = Vec::with_capacity(7);

    // the servers' scenarios first, while nothing in this process holds much memory
    let versions = rt.block_on(async {
        let env = TestEnv::new("bench_report_versions").await;
        let v = server_versions(&env).await;
        env.cleanup().await;
        v
    });
    let (e2e, latency) = rt.block_on(end_to_end(&sizes))?;
    scenarios.push(e2e);
    scenarios.push(latency);
    scenarios.push(cpu(&sizes));
    scenarios.push(dedup_memory(&sizes));
    scenarios.push(rater(&sizes)?);
    scenarios.push(rt.block_on(invoicer(&sizes))?);
    scenarios.push(rt.block_on(clickhouse_insert(&sizes))?);

    let machine = json!({
        "started": started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        "seconds": started.elapsed().as_secs_f64(),
        "cpu": cpu_model(),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_mib": memory_mib(),
        "load_before": load_before,
        "load_after": load_average(),
        "nats": versions.0,
        "clickhouse": versions.1,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    Ok(Report {
        quick,
        sizes,
        machine,
        scenarios,
    })
}

fn progress(what: &str) {
    eprintln!("[tally-bench report] {what}");
}

/// Scenarios 1 and 2: throughput against raw JetStream (alternating rounds, best of each, so
/// both see the machine in the same state), then latency at half our throughput against
/// raw JetStream at the same rate.
async fn end_to_end(sizes: &Sizes) -> anyhow::Result<(Scenario, Scenario)> {
    let t = Instant::now();
    let mut bytes = 0;
    let (mut base, mut ours): (Option<pipeline::Run>, Option<pipeline::Run>) = (None, None);
    let faster = |best: Option<pipeline::Run>, run: pipeline::Run| match best {
        Some(b) if b.per_sec >= run.per_sec => Some(b),
        _ => Some(run),
    };
    for round in 0..sizes.e2e_rounds.max(1) {
        progress(&format!("end-to-end throughput, round {}", round + 1));
        let env = TestEnv::new("bench_report_e2e").await;
        let msgs = pipeline::messages(
            &env.nats.subject_prefix,
            sizes.e2e_events,
            sizes.duplicate_share,
        );
        bytes = msgs.iter().map(|m| m.2.len()).sum::<usize>() / msgs.len().max(1);
        let b = pipeline::baseline(&env, &msgs).await;
        let o = match &b {
            Ok(_) => pipeline::throughput(&env, &msgs).await.map(Some),
            Err(_) => Ok(None),
        };
        env.cleanup().await;
        base = faster(base, b?);
        if let Some(o) = o? {
            ours = faster(ours, o);
        }
    }
    let (base_run, ours_run) = (
        base.context("no baseline round ran")?,
        ours.context("no round of ours ran")?,
    );
    let (base, ours) = (base_run.per_sec, ours_run.per_sec);
    let mut cpu = Vec::new();
    for (who, run) in [("baseline", base_run), ("ours", ours_run)] {
        for (process, seconds) in [
            ("NATS", run.cpu.nats),
            ("ClickHouse", run.cpu.clickhouse),
            ("benchmark process", run.cpu.this),
        ] {
            if let Some(us) = run.micros_per_event(seconds) {
                cpu.push((format!("{who} CPU us/event, {process}"), us));
            }
        }
    }
    let throughput = Scenario {
        id: "e2e_throughput",
        title: format!(
            "end-to-end throughput: {} events of ~{bytes} bytes, {:.0}% re-sent ids, committed to ClickHouse (best of {} alternating rounds)",
            sizes.e2e_events,
            sizes.duplicate_share * 100.0,
            sizes.e2e_rounds.max(1)
        ),
        unit: "events/s",
        baseline_label: "raw JetStream publish + consume with acks".into(),
        baseline: base,
        ours_label: "publish, aggregate, commit, ack".into(),
        ours,
        better: Better::Higher,
        target: "ratio >= 0.8".into(),
        met: Some(ours / base >= 0.8),
        percentiles: cpu,
        seconds: t.elapsed().as_secs_f64(),
    };

    let t = Instant::now();
    let rate = (ours / 2.0).max(1.0);
    progress(&format!("latency at {rate:.0} events/s"));
    let env = TestEnv::new("bench_report_latency").await;
    let probe = pipeline::messages(&env.nats.subject_prefix, sizes.latency_events, 0.0);
    let raw = pipeline::raw_latency(&env, &probe, rate).await;
    let visible = if raw.is_ok() {
        pipeline::latency(&env, &probe, rate).await
    } else {
        Err(anyhow::anyhow!("skipped: the raw baseline failed"))
    };
    env.cleanup().await;
    let (raw, visible) = (raw?, visible?);
    let latency = Scenario {
        id: "latency",
        title: format!(
            "latency p99: publish -> visible in v_usage at {rate:.0} events/s (half of ours above), {} events",
            visible.samples
        ),
        unit: "ms (p99)",
        baseline_label: "raw JetStream publish -> consumer receipt".into(),
        baseline: raw.p99,
        ours_label: "publish -> counted by v_usage (polled every 25 ms)".into(),
        ours: visible.p99,
        better: Better::Lower,
        target: "p99 <= 1000 ms".into(),
        met: Some(visible.p99 <= 1000.0),
        percentiles: vec![
            ("baseline p50 ms".into(), raw.p50),
            ("baseline p99 ms".into(), raw.p99),
            ("baseline p99.9 ms".into(), raw.p999),
            ("baseline max ms".into(), raw.max),
            ("ours p50 ms".into(), visible.p50),
            ("ours p99 ms".into(), visible.p99),
            ("ours p99.9 ms".into(), visible.p999),
            ("ours max ms".into(), visible.max),
        ],
        seconds: t.elapsed().as_secs_f64(),
    };
    Ok((throughput, latency))
}

/// Scenario 3: the aggregator's per-event CPU cost against a generic JSON parse of the same
/// bytes, one thread.
fn cpu(sizes: &Sizes) -> Scenario {
    progress("aggregator CPU");
    let t = Instant::now();
    let msgs = aggregator_cpu::messages(sizes.cpu_events);
    // warm both paths once (page faults, allocator arenas), then measure
    let warm = &msgs[..msgs.len().min(20_000)];
    aggregator_cpu::baseline_value_parse(warm);
    aggregator_cpu::run_on(warm, sizes.cpu_batch);
    // alternating passes, best of each: the host's other tenants slow a whole pass (run to
    // run spread 480k to 1M events per CPU-second on this VM), so the fastest pass is the
    // one least disturbed, for both
    let mut base = 0.0f64;
    let mut ours: Option<aggregator_cpu::CpuReport> = None;
    for _ in 0..sizes.cpu_rounds.max(1) {
        base = base.max(aggregator_cpu::baseline_value_parse(&msgs));
        let pass = aggregator_cpu::run_on(&msgs, sizes.cpu_batch);
        if ours
            .as_ref()
            .is_none_or(|best| pass.events_per_sec > best.events_per_sec)
        {
            ours = Some(pass);
        }
    }
    let ours = ours.expect("at least one pass ran");
    Scenario {
        id: "aggregator_cpu",
        title: format!(
            "aggregator CPU: parse + validate + dedup + window, 1 thread, {} events of {} bytes (best of {} alternating passes)",
            ours.events, ours.mean_event_bytes, sizes.cpu_rounds.max(1)
        ),
        unit: "events per CPU-second (1 thread)",
        baseline_label: "serde_json::from_slice into a Value".into(),
        baseline: base,
        ours_label: "classify + dedup + window".into(),
        ours: ours.events_per_sec,
        better: Better::Higher,
        target: ">= 750,000 events/s".into(),
        met: Some(ours.events_per_sec >= 750_000.0),
        percentiles: vec![
            ("ours per wall second".into(), ours.events_per_wall_sec),
            (
                "share of wall time waiting for a core %".into(),
                ours.waited_share.unwrap_or(0.0) * 100.0,
            ),
            (
                format!("per {}-event batch p50 us", ours.batch),
                ours.batch_us.0 as f64,
            ),
            (
                format!("per {}-event batch p99 us", ours.batch),
                ours.batch_us.1 as f64,
            ),
            (
                format!("per {}-event batch p99.9 us", ours.batch),
                ours.batch_us.2 as f64,
            ),
        ],
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// Scenario 4: bytes the committed dedup set holds per million ids, against a std HashMap.
fn dedup_memory(sizes: &Sizes) -> Scenario {
    progress("dedup memory");
    let t = Instant::now();
    let per_million = |bytes_per_id: f64| bytes_per_id * 1_000_000.0 / 1_048_576.0;
    let base = per_million(aggregator_cpu::hashmap_bytes_per_id(sizes.dedup_ids));
    let ours = per_million(aggregator_cpu::dedup_bytes_per_id(sizes.dedup_ids));
    Scenario {
        id: "dedup_memory",
        title: format!(
            "dedup memory: committed set holding {} ids",
            sizes.dedup_ids
        ),
        unit: "MiB per million ids",
        baseline_label: "std HashMap<u128, (u64, u32)>, same keys".into(),
        baseline: base,
        ours_label: "Committed (sorted run of 20-byte entries behind a small hash table)".into(),
        ours,
        better: Better::Lower,
        target: "<= 24 MiB per million".into(),
        met: Some(ours > 0.0 && ours <= 24.0),
        percentiles: vec![],
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// Scenario 5: usage rows rated per second against summing their quantities.
fn rater(sizes: &Sizes) -> anyhow::Result<Scenario> {
    progress("rater");
    let t = Instant::now();
    let base = rating::baseline(sizes.rating_rows, sizes.rating_customers);
    let ours = rating::run(sizes.rating_rows, sizes.rating_customers)?;
    Ok(Scenario {
        id: "rater",
        title: format!(
            "rater: fold + price, 1 thread, {} usage rows of {} customers into {} charges",
            ours.rows, sizes.rating_customers, ours.charges
        ),
        unit: "usage rows/s per core",
        baseline_label: "summing the same Decimal quantities".into(),
        baseline: base,
        ours_label: "fold + price".into(),
        ours: ours.rows_per_sec,
        better: Better::Higher,
        target: ">= 1,000,000 rows/s".into(),
        met: Some(ours.rows_per_sec >= 1_000_000.0),
        percentiles: vec![],
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The columns an invoice needs from a charge, in the order selected.
#[derive(clickhouse::Row, serde::Deserialize)]
struct ChargeRow {
    charge_id: String,
    customer: String,
    meter: String,
    currency: String,
    amount_minor: i64,
}

/// Scenario 6: one invoicing pass over customers x meters charges against reading the same
/// charge rows back.
async fn invoicer(sizes: &Sizes) -> anyhow::Result<Scenario> {
    progress("invoicer");
    let t = Instant::now();
    let env = TestEnv::new("bench_report_invoicer").await;
    let result = async {
        let (secs, invoices) =
            invoicing::run(&env, sizes.invoicer_customers, sizes.invoicer_meters).await?;
        let read = Instant::now();
        let rows = env
            .db()
            .query("SELECT charge_id, customer, meter, currency, amount_minor FROM charges")
            .fetch_all::<ChargeRow>()
            .await?;
        let read_secs = read.elapsed().as_secs_f64();
        let text_bytes: usize = rows
            .iter()
            .map(|r| r.charge_id.len() + r.customer.len() + r.meter.len() + r.currency.len())
            .sum();
        std::hint::black_box((text_bytes, rows.iter().map(|r| r.amount_minor).sum::<i64>()));
        anyhow::ensure!(
            rows.len() == sizes.invoicer_customers * sizes.invoicer_meters,
            "read back {} charges, inserted {}",
            rows.len(),
            sizes.invoicer_customers * sizes.invoicer_meters
        );
        Ok::<_, anyhow::Error>((secs, invoices, read_secs))
    }
    .await;
    env.cleanup().await;
    let (secs, invoices, read_secs) = result?;
    Ok(Scenario {
        id: "invoicer",
        title: format!(
            "invoicer: {} customers x {} meters, one period, one pass ({invoices} invoices)",
            sizes.invoicer_customers, sizes.invoicer_meters
        ),
        unit: "seconds",
        baseline_label: "reading the same charge rows back".into(),
        baseline: read_secs,
        ours_label: "invoice_once".into(),
        ours: secs,
        better: Better::Lower,
        target: "<= 10 s".into(),
        met: Some(secs <= 10.0 && invoices == sizes.invoicer_customers),
        percentiles: vec![],
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Scenario 7: the aggregator's commit against a plain insert of the same rows.
async fn clickhouse_insert(sizes: &Sizes) -> anyhow::Result<Scenario> {
    progress("ClickHouse insert");
    let t = Instant::now();
    let env = TestEnv::new("bench_report_insert").await;
    let r = insert::run(&env, sizes.insert_events, sizes.insert_batch).await;
    env.cleanup().await;
    let r = r?;
    Ok(Scenario {
        id: "clickhouse_insert",
        title: format!(
            "ClickHouse insert: {} events = {} event and reading rows in batches of {}",
            sizes.insert_events, r.rows, sizes.insert_batch
        ),
        unit: "rows/s",
        baseline_label: "plain insert with the clickhouse crate".into(),
        baseline: r.plain,
        ours_label: "aggregator commit (rows + marker)".into(),
        ours: r.ours,
        better: Better::Higher,
        target: "none in the issue (ratio reported)".into(),
        met: None,
        percentiles: vec![
            ("plain per batch p50 ms".into(), r.plain_ms.0),
            ("plain per batch p99 ms".into(), r.plain_ms.1),
            ("plain per batch max ms".into(), r.plain_ms.2),
            ("ours per batch p50 ms".into(), r.ours_ms.0),
            ("ours per batch p99 ms".into(), r.ours_ms.1),
            ("ours per batch max ms".into(), r.ours_ms.2),
        ],
        seconds: t.elapsed().as_secs_f64(),
    })
}
