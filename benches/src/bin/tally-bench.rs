//! `tally-bench`: runs the benchmarks and prints markdown tables.
//!
//! `tally-bench report [--quick] [--out docs/bench]` runs all seven scenarios of the
//! benchmarks issue in one run, each next to its baseline; every scenario is also a command
//! of its own (`cargo run --release -p tally-benches --bin tally-bench -- pipeline
//! --events 200000`). `tally-bench --help` lists them, and `tally-bench <command> --help`
//! each one's flags with their defaults ([`Bench`]). See docs/BENCHMARKS.md.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tally_benches::{
    aggregator_cpu, alloc, cluster, gateway, history, insert, invoicing, pipeline, rating, report,
};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Runs the benchmarks and prints markdown tables (docs/BENCHMARKS.md).
///
/// Without a command: the aggregator's CPU (parse, validate, dedup and window on one thread)
/// and the dedup memory per committed id. Commands marked "needs the stack" run against the
/// local NATS and ClickHouse (scripts/stack.sh up). In pipeline and report, the aggregator runs
/// with its shipped batch_max_events and batch_max_wait_ms unless TALLY_BENCH_BATCH /
/// TALLY_BENCH_WAIT_MS say otherwise; both print the CPU microseconds per event that NATS,
/// ClickHouse and this process spent.
#[derive(Parser)]
#[command(name = "tally-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Bench>,
    /// Events parsed and windowed on one thread (without a command)
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    events: usize,
    /// Committed ids whose dedup memory is measured (without a command)
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    ids: usize,
}

#[derive(Subcommand)]
enum Bench {
    /// All seven scenarios, each next to its baseline, into report.md and report.json (needs
    /// the stack)
    Report {
        /// Every scenario tiny, to check the harness
        #[arg(long)]
        quick: bool,
        /// Where report.md and report.json are written
        #[arg(long, value_name = "DIR", default_value = "docs/bench")]
        out: PathBuf,
    },
    /// Rating throughput: usage rows folded and priced on one thread
    Rating {
        /// Usage rows rated
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        rows: usize,
        /// Customers the rows belong to
        #[arg(long, value_name = "N", default_value_t = 1000)]
        customers: usize,
        /// Rating passes over the same rows, one figure each (building the rows is never
        /// timed; more passes keep it out of a profile)
        #[arg(long, value_name = "N", default_value_t = 1)]
        passes: usize,
    },
    /// Ingest throughput through the HTTP gateway against the direct publisher (needs the
    /// stack)
    Gateway {
        /// Events sent
        #[arg(long, value_name = "N", default_value_t = 200_000)]
        events: usize,
        /// Events per HTTP request
        #[arg(long, value_name = "N", default_value_t = 100)]
        batch: usize,
        /// Keep-alive connections
        #[arg(long, value_name = "N", default_value_t = 4)]
        connections: usize,
    },
    /// End-to-end throughput against raw JetStream publish and consume, then
    /// publish-to-visible latency at half of it (needs the stack)
    Pipeline {
        /// Events of the throughput run
        #[arg(long, value_name = "N", default_value_t = 200_000)]
        events: usize,
        /// Share of the events re-sent with an earlier id
        #[arg(long, value_name = "SHARE", default_value_t = 0.05)]
        duplicate_share: f64,
        /// Events of the latency run
        #[arg(long, value_name = "N", default_value_t = 20_000)]
        latency_events: usize,
    },
    /// One invoicing pass over customers x meters charges (needs the stack)
    Invoicer {
        /// Customers invoiced
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        customers: usize,
        /// Meters charged per customer
        #[arg(long, value_name = "N", default_value_t = 10)]
        meters: usize,
    },
    /// The aggregator's ClickHouse commit against a plain insert of the same rows (needs the
    /// stack)
    Insert {
        /// Events committed
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        events: usize,
        /// Events per commit
        #[arg(long, value_name = "N", default_value_t = 5000)]
        batch: usize,
    },
    /// Rating passes as stored history grows, and over a big month (needs the stack; the full
    /// sizes write about 200M usage rows and take several minutes)
    History {
        /// Stored histories measured, in events, comma-separated
        #[arg(
            long,
            value_name = "N,N",
            value_delimiter = ',',
            default_value = "1000000,10000000,100000000"
        )]
        histories: Vec<u64>,
        /// Events of the rated period
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        period: u64,
        /// Events of the big month (0: skip it)
        #[arg(long, value_name = "N", default_value_t = 100_000_000)]
        big: u64,
        /// New events after the big month's full pass
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        more: u64,
        /// Customers the events belong to
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        customers: u64,
    },
    /// The pipeline scenarios on the cluster profile (scripts/cluster.sh up, then
    /// eval "$(scripts/cluster.sh env)"): R3 streams and ClickHouse quorum writes against raw
    /// JetStream R3 publish and consume
    Cluster {
        /// Events of the throughput run
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        events: usize,
        /// Share of the events re-sent with an earlier id; 0 by default (the figures of
        /// docs/BENCHMARKS.md). A re-send JetStream answers 409 "in process" (its original
        /// still being replicated on R3) is sent again until answered, as every usage
        /// publisher does
        #[arg(long, value_name = "SHARE", default_value_t = 0.0)]
        duplicate_share: f64,
        /// Events of the latency run
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        latency_events: usize,
    },
    /// Live spend control: authorize and release latency, freshness under load, false denials
    /// under a mixed load, next to NATS request/reply alone (needs the stack)
    Spend {
        /// Seconds of each fixed-rate run
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        secs: u64,
        /// Freshness probes
        #[arg(long, value_name = "N", default_value_t = 200)]
        probes: usize,
        /// Background events per second during the freshness probes
        #[arg(long, value_name = "PER_SEC", default_value_t = 10_000)]
        load: u64,
        /// Requests of the mixed load
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        mixed: u64,
        /// Customers of the spend alerts run (each crosses three thresholds; 0: no alerts run)
        #[arg(long, value_name = "N", default_value_t = 300)]
        alert_customers: usize,
        /// Threshold crossings published per second in the spend alerts run
        #[arg(long, value_name = "PER_SEC", default_value_t = 50)]
        alert_rate: u64,
        /// Only the spend alerts run (threshold crossed to NATS alert and webhook delivered)
        #[arg(long)]
        only_alerts: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => aggregator_bench(cli.events, cli.ids),
        Some(Bench::Report { quick, out }) => report_bench(quick, &out),
        Some(Bench::Rating {
            rows,
            customers,
            passes,
        }) => rating_bench(rows, customers, passes),
        Some(Bench::Gateway {
            events,
            batch,
            connections,
        }) => gateway_bench(events, batch, connections),
        Some(Bench::Pipeline {
            events,
            duplicate_share,
            latency_events,
        }) => pipeline_bench(events, duplicate_share, latency_events),
        Some(Bench::Invoicer { customers, meters }) => invoicer_bench(customers, meters),
        Some(Bench::Insert { events, batch }) => insert_bench(events, batch),
        Some(Bench::History {
            histories,
            period,
            big,
            more,
            customers,
        }) => history_bench(&histories, period, big, more, customers),
        Some(Bench::Cluster {
            events,
            duplicate_share,
            latency_events,
        }) => cluster_bench(events, duplicate_share, latency_events),
        Some(Bench::Spend {
            secs,
            probes,
            load,
            mixed,
            alert_customers,
            alert_rate,
            only_alerts,
        }) => spend_bench(
            (!only_alerts).then_some((secs, probes, load, mixed)),
            alert_customers,
            alert_rate,
        ),
    }
}

/// `tally-bench` without a command: aggregator CPU and dedup memory.
fn aggregator_bench(events: usize, ids: usize) -> anyhow::Result<()> {
    let cpu = aggregator_cpu::run(events, 5000);
    let bytes = aggregator_cpu::dedup_bytes_per_id(ids);
    println!("| scenario | figure | target |");
    println!("|---|---|---|");
    println!(
        "| aggregator CPU: parse + validate + dedup + window, 1 thread, {} events of {} bytes | {:.0} events/s per CPU-second ({:.0} per wall second, waited for a core {:.0}% of it); per {}-event batch p50 {} us, p99 {} us, p99.9 {} us | >= 750,000 events/s per core |",
        cpu.events, cpu.mean_event_bytes, cpu.events_per_sec, cpu.events_per_wall_sec,
        cpu.waited_share.unwrap_or(0.0) * 100.0, cpu.batch, cpu.batch_us.0, cpu.batch_us.1, cpu.batch_us.2
    );
    println!(
        "| dedup memory, {} committed ids | {:.1} bytes/id = {:.1} MiB per million ids | <= 24 MiB per million |",
        ids,
        bytes,
        bytes * 1_000_000.0 / 1_048_576.0
    );
    Ok(())
}

/// `tally-bench report`: every scenario with its baseline, into report.md and report.json.
fn report_bench(quick: bool, out: &std::path::Path) -> anyhow::Result<()> {
    let sizes = if quick {
        report::Sizes::quick()
    } else {
        report::Sizes::full()
    };
    let r = report::run(sizes, quick)?;
    let (md, json) = r.write(out)?;
    print!("{}", r.to_markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// `tally-bench rating`: usage rows rated per second on one thread, per pass.
fn rating_bench(rows: usize, customers: usize, passes: usize) -> anyhow::Result<()> {
    println!("| scenario | figure |");
    println!("|---|---|");
    for r in rating::run_passes(rows, customers, passes)? {
        println!(
            "| rating: fold + price, 1 thread, {} usage rows of {} customers into {} charges | {:.0} usage rows/s |",
            r.rows, customers, r.charges, r.rows_per_sec
        );
    }
    Ok(())
}

/// `tally-bench gateway`: events per second through HTTP into JetStream vs the direct publisher.
fn gateway_bench(events: usize, batch: usize, connections: usize) -> anyhow::Result<()> {
    let r = gateway::run(events, batch, connections)?;
    println!("| scenario | figure |");
    println!("|---|---|");
    println!(
        "| direct JetStream publisher, 256 in flight, {} events of {} bytes | {:.0} events/s |",
        r.events, r.mean_event_bytes, r.direct_events_per_sec
    );
    println!(
        "| HTTP gateway, batches of {} over {} keep-alive connections, {} events | {:.0} events/s; per batch p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        r.batch, r.connections, r.events, r.gateway_events_per_sec, r.batch_ms.0, r.batch_ms.1, r.batch_ms.2
    );
    Ok(())
}

/// `tally-bench pipeline`: events committed per second against raw JetStream publish and
/// consume of the same messages, then latency at half the measured throughput.
fn pipeline_bench(n: usize, dup: f64, latency_n: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let env = tally_platform::testkit::TestEnv::new("bench_pipeline").await;
        let msgs = pipeline::messages(&env.nats.subject_prefix, n, dup);
        let bytes = msgs.iter().map(|m| m.2.len()).sum::<usize>() / msgs.len().max(1);
        let base_run = pipeline::baseline(&env, &msgs).await?;
        let ours_run = pipeline::throughput(&env, &msgs).await?;
        let (base, ours) = (base_run.per_sec, ours_run.per_sec);
        env.cleanup().await;
        let env = tally_platform::testkit::TestEnv::new("bench_latency").await;
        let probe = pipeline::messages(&env.nats.subject_prefix, latency_n, 0.0);
        let rate = ours / 2.0;
        let l = pipeline::latency(&env, &probe, rate).await?;
        env.cleanup().await;
        println!("| scenario | baseline | ours | ratio | target |");
        println!("|---|---|---|---|---|");
        println!(
            "| end-to-end throughput, {n} events of {bytes} bytes, {:.0}% re-sent | raw JetStream publish + consume: {base:.0} msg/s | committed to ClickHouse: {ours:.0} events/s | {:.2} | >= 0.8 |",
            dup * 100.0,
            ours / base
        );
        println!(
            "| latency publish -> visible in v_usage at {rate:.0} events/s ({} events) | | p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms | | p99 <= 1000 ms |",
            l.samples, l.p50, l.p99, l.p999
        );
        println!();
        println!("| CPU microseconds per event | NATS | ClickHouse | this process | total |");
        println!("|---|---|---|---|---|");
        for (name, run) in [("raw JetStream", base_run), ("ours", ours_run)] {
            let us = |s| run.micros_per_event(s).map_or("-".into(), |v| format!("{v:.1}"));
            println!(
                "| {name} | {} | {} | {} | {} |",
                us(run.cpu.nats),
                us(run.cpu.clickhouse),
                us(run.cpu.this),
                us(Some(run.cpu.total()))
            );
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// `tally-bench invoicer`: one invoicing pass over `customers` x `meters` charges.
fn invoicer_bench(customers: usize, meters: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let env = tally_platform::testkit::TestEnv::new("bench_invoicer").await;
        let m = invoicing::measure(&env, customers, meters).await;
        env.cleanup().await;
        let m = m?;
        let r = &m.report;
        println!("| scenario | figure | baseline: the pass's charge cursor alone | read / build / number+freeze / write | target |");
        println!("|---|---|---|---|---|");
        println!(
            "| invoicer: {customers} customers x {meters} meters, one period | {} invoices in {:.2} s ({} batches) | {:.2} s | {:.2} / {:.2} / {:.2} / {:.2} s | <= 10 s |",
            r.invoices,
            m.secs,
            r.batches,
            m.read_back_secs,
            r.read.as_secs_f64(),
            r.build.as_secs_f64(),
            r.finalize.as_secs_f64(),
            r.write.as_secs_f64()
        );
        Ok::<_, anyhow::Error>(())
    })
}

/// `tally-bench history`: rating passes as stored history grows, and over a big month.
fn history_bench(
    histories: &[u64],
    period: u64,
    big: u64,
    more: u64,
    customers: u64,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        println!("| scenario | rating pass | ClickHouse peak memory | charges | usage rows read |");
        println!("|---|---|---|---|---|");
        let env = tally_platform::testkit::TestEnv::new("bench_history").await;
        let passes = history::history(&env, histories, period, customers).await;
        env.cleanup().await;
        for (stored, p) in passes? {
            println!(
                "| history of {stored} events, period of {period} events of {customers} customers | {:.2} s | {:.1} MiB | {} | {} |",
                p.seconds, p.peak_bytes as f64 / 1_048_576.0, p.charges, p.rows
            );
        }
        if big > 0 {
            let env = tally_platform::testkit::TestEnv::new("bench_big_period").await;
            let r = history::big_period(&env, big, more, customers).await;
            env.cleanup().await;
            let (full, incremental, shipped) = r?;
            for (what, p) in [
                ("36 h unsealed, full pass", full),
                ("36 h unsealed, after more new events", incremental),
                ("12 h unsealed (shipped lateness), after more new events", shipped),
            ] {
                println!(
                    "| month of {big} events of {customers} customers, {what} | {:.2} s | {:.1} MiB | {} | {} |",
                    p.seconds, p.peak_bytes as f64 / 1_048_576.0, p.charges, p.rows
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}

/// `tally-bench insert`: the aggregator's commit against a plain insert of the same rows.
fn insert_bench(events: usize, batch: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let env = tally_platform::testkit::TestEnv::new("bench_insert").await;
        let r = insert::run(&env, events, batch).await?;
        let (plain, ours, rows) = (r.plain, r.ours, r.rows);
        env.cleanup().await;
        println!("| scenario | baseline | ours | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| ClickHouse insert, {events} events = {rows} event and reading rows in batches of {batch} | plain insert, no marker: {plain:.0} rows/s | commit with marker: {ours:.0} rows/s | {:.2} |",
            ours / plain
        );
        Ok::<_, anyhow::Error>(())
    })
}

/// `tally-bench cluster`: the pipeline scenarios on the cluster profile, each next to raw
/// JetStream R3 measured in the same run on the same cluster.
fn cluster_bench(events: usize, dup: f64, latency_events: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let figures = rt.block_on(cluster::run(events, dup, latency_events))?;
    print!("{}", figures.to_markdown());
    Ok(())
}

/// `tally-bench spend`: live spend control (authorize and release latency at fixed rates
/// and the most a closed loop reaches, publish-to-balance freshness under background load,
/// false denials under a mixed load), next to NATS request/reply alone in the same run; then
/// the spend alerts run (threshold crossed to NATS alert and signed webhook delivered).
fn spend_bench(
    decisions: Option<(u64, usize, u64, u64)>,
    alert_customers: usize,
    alert_rate: u64,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    if let Some((secs, probes, load, mixed)) = decisions {
        let figures = rt.block_on(tally_benches::spend::run(secs, probes, load, mixed))?;
        print!("{}", figures.to_markdown());
    }
    if alert_customers > 0 {
        let figures = rt.block_on(tally_benches::spend_alerts::run(
            alert_customers,
            alert_rate,
        ))?;
        print!("{}", figures.to_markdown());
    }
    Ok(())
}
