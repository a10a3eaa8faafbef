//! `tally-bench`: runs the benchmarks and prints markdown tables.
//!
//! `tally-bench report [--quick] [--out docs/bench]` runs all seven scenarios of the
//! benchmarks issue in one run, each next to its baseline, and writes `report.md` and
//! `report.json` into `--out` (needs the local stack; see docs/BENCHMARKS.md). `--quick` runs
//! everything tiny, to check the harness.
//!
//! Single scenarios:
//! `cargo run --release -p tally-benches --bin tally-bench [--events 1000000] [--ids 1000000]`,
//! or `... --bin tally-bench rating [--rows 1000000] [--customers 1000]` for rating throughput,
//! or `... --bin tally-bench gateway [--events 200000] [--batch 100] [--connections 4]` for
//! ingest throughput through the HTTP gateway against the direct publisher (needs the stack),
//! or `... pipeline [--events 200000] [--duplicate-share 0.05] [--latency-events 20000]` for
//! end-to-end throughput against raw JetStream and publish-to-visible latency (needs the
//! stack), or `... invoicer [--customers 10000] [--meters 10]` for one invoicing pass, or
//! `... insert [--events 100000] [--batch 5000]` for the ClickHouse commit against a plain
//! insert of the same rows (needs the stack), or `... history [--histories 1000000,10000000,
//! 100000000] [--period 1000000] [--big 100000000] [--more 1000000] [--customers 10000]` for
//! rating passes as stored history grows and over a big month (needs the stack; the full
//! sizes write about 200M usage rows and take several minutes), or `... cluster [--events
//! 100000] [--duplicate-share 0] [--latency-events 10000]` for the pipeline scenarios on the
//! cluster profile (`scripts/cluster.sh up`, then `eval "$(scripts/cluster.sh env)"`): R3
//! streams and ClickHouse quorum writes against raw JetStream R3 publish and consume. No
//! re-sent ids by default: on an R3 stream of nats-server 2.15 a re-send published while its
//! original is still being replicated is refused (409, "duplicate message id is in process"),
//! which the benchmark's publisher counts as a failure.
//!
//! `... spend [--secs 5] [--probes 200] [--load 10000] [--mixed 10000]` measures live spend
//! control (needs the stack).
//!
//! In `pipeline` and `report`, the aggregator runs with its shipped `batch_max_events` and
//! `batch_max_wait_ms` unless `TALLY_BENCH_BATCH` / `TALLY_BENCH_WAIT_MS` say otherwise; both
//! print the CPU microseconds per event that NATS, ClickHouse and this process spent.

use tally_benches::{
    aggregator_cpu, alloc, cluster, gateway, history, insert, invoicing, pipeline, rating, report,
};
use tally_platform::args::Args;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        // the usage is this file's module documentation
        let usage = include_str!("tally-bench.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        println!("{usage}");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("report") {
        return report_bench();
    }
    if std::env::args().nth(1).as_deref() == Some("rating") {
        return rating_bench();
    }
    if std::env::args().nth(1).as_deref() == Some("gateway") {
        return gateway_bench();
    }
    if std::env::args().nth(1).as_deref() == Some("pipeline") {
        return pipeline_bench();
    }
    if std::env::args().nth(1).as_deref() == Some("invoicer") {
        return invoicer_bench();
    }
    if std::env::args().nth(1).as_deref() == Some("insert") {
        return insert_bench();
    }
    if std::env::args().nth(1).as_deref() == Some("history") {
        return history_bench();
    }
    if std::env::args().nth(1).as_deref() == Some("spend") {
        return spend_bench();
    }
    if std::env::args().nth(1).as_deref() == Some("cluster") {
        return cluster_bench();
    }
    let args = Args::parse(std::env::args().skip(1), &["events", "ids"])?;
    let events: usize = args.get("events", 1_000_000)?;
    let ids: usize = args.get("ids", 1_000_000)?;
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
        "| dedup memory, {} committed ids | {:.1} bytes/id = {:.1} MiB per million ids | <= 48 MiB per million |",
        ids,
        bytes,
        bytes * 1_000_000.0 / 1_048_576.0
    );
    Ok(())
}

/// `tally-bench report`: every scenario with its baseline, into report.md and report.json.
fn report_bench() -> anyhow::Result<()> {
    let rest: Vec<String> = std::env::args().skip(2).collect();
    let quick = rest.iter().any(|a| a == "--quick");
    let args = Args::parse(rest.into_iter().filter(|a| a != "--quick"), &["out"])?;
    let out: String = args.get("out", "docs/bench".to_owned())?;
    let sizes = if quick {
        report::Sizes::quick()
    } else {
        report::Sizes::full()
    };
    let r = report::run(sizes, quick)?;
    let (md, json) = r.write(std::path::Path::new(&out))?;
    print!("{}", r.to_markdown());
    eprintln!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// `tally-bench rating`: usage rows rated per second on one thread.
fn rating_bench() -> anyhow::Result<()> {
    let args = Args::parse(std::env::args().skip(2), &["rows", "customers"])?;
    let rows: usize = args.get("rows", 1_000_000)?;
    let customers: usize = args.get("customers", 1000)?;
    let r = rating::run(rows, customers)?;
    println!("| scenario | figure |");
    println!("|---|---|");
    println!(
        "| rating: fold + price, 1 thread, {} usage rows of {} customers into {} charges | {:.0} usage rows/s |",
        r.rows, customers, r.charges, r.rows_per_sec
    );
    Ok(())
}

/// `tally-bench gateway`: events per second through HTTP into JetStream vs the direct publisher.
fn gateway_bench() -> anyhow::Result<()> {
    let args = Args::parse(
        std::env::args().skip(2),
        &["events", "batch", "connections"],
    )?;
    let r = gateway::run(
        args.get("events", 200_000)?,
        args.get("batch", 100)?,
        args.get("connections", 4)?,
    )?;
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
fn pipeline_bench() -> anyhow::Result<()> {
    let args = Args::parse(
        std::env::args().skip(2),
        &["events", "duplicate-share", "latency-events"],
    )?;
    let n: usize = args.get("events", 200_000)?;
    let dup: f64 = args.get("duplicate-share", 0.05)?;
    let latency_n: usize = args.get("latency-events", 20_000)?;
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
fn invoicer_bench() -> anyhow::Result<()> {
    let args = Args::parse(std::env::args().skip(2), &["customers", "meters"])?;
    let customers: usize = args.get("customers", 10_000)?;
    let meters: usize = args.get("meters", 10)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let env = tally_platform::testkit::TestEnv::new("bench_invoicer").await;
        let (secs, invoices) = invoicing::run(&env, customers, meters).await?;
        env.cleanup().await;
        println!("| scenario | figure | target |");
        println!("|---|---|---|");
        println!("| invoicer: {customers} customers x {meters} meters, one period | {invoices} invoices in {secs:.2} s | <= 10 s |");
        Ok::<_, anyhow::Error>(())
    })
}

/// `tally-bench history`: rating passes as stored history grows, and over a big month.
fn history_bench() -> anyhow::Result<()> {
    let args = Args::parse(
        std::env::args().skip(2),
        &["histories", "period", "big", "more", "customers"],
    )?;
    let histories: Vec<u64> = args
        .raw("histories")
        .unwrap_or("1000000,10000000,100000000")
        .split(',')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()?;
    let period: u64 = args.get("period", 1_000_000)?;
    let big: u64 = args.get("big", 100_000_000)?;
    let more: u64 = args.get("more", 1_000_000)?;
    let customers: u64 = args.get("customers", 10_000)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        println!("| scenario | rating pass | ClickHouse peak memory | charges | usage rows read |");
        println!("|---|---|---|---|---|");
        let env = tally_platform::testkit::TestEnv::new("bench_history").await;
        let passes = history::history(&env, &histories, period, customers).await;
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
fn insert_bench() -> anyhow::Result<()> {
    let args = Args::parse(std::env::args().skip(2), &["events", "batch"])?;
    let events: usize = args.get("events", 100_000)?;
    let batch: usize = args.get("batch", 5000)?;
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
fn cluster_bench() -> anyhow::Result<()> {
    let args = Args::parse(
        std::env::args().skip(2),
        &["events", "duplicate-share", "latency-events"],
    )?;
    let events: usize = args.get("events", 100_000)?;
    let dup: f64 = args.get("duplicate-share", 0.0)?;
    let latency_events: usize = args.get("latency-events", 10_000)?;
    let rt = tokio::runtime::Runtime::new()?;
    let figures = rt.block_on(cluster::run(events, dup, latency_events))?;
    print!("{}", figures.to_markdown());
    Ok(())
}

/// `tally-bench spend`: live spend control (authorize and release latency at fixed rates
/// and the most a closed loop reaches, publish-to-balance freshness under background load,
/// false denials under a mixed load), next to NATS request/reply alone in the same run.
fn spend_bench() -> anyhow::Result<()> {
    let args = Args::parse(
        std::env::args().skip(2),
        &["secs", "probes", "load", "mixed"],
    )?;
    let secs: u64 = args.get("secs", 5)?;
    let probes: usize = args.get("probes", 200)?;
    let load: u64 = args.get("load", 10_000)?;
    let mixed: u64 = args.get("mixed", 10_000)?;
    let rt = tokio::runtime::Runtime::new()?;
    let figures = rt.block_on(tally_benches::spend::run(secs, probes, load, mixed))?;
    print!("{}", figures.to_markdown());
    Ok(())
}
