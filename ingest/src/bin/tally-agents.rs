//! `tally-agents`: synthetic agents publishing usage for a while.
//! Usage: `tally-agents [--config FILE] [--customers 3] [--agents 2] [--seconds 5]
//! [--rate 400] [--duplicate-share 0.05] [--seed 1] [--run-id ID]`.
//! `--rate` is events per second over the whole fleet; `--duplicate-share` of the publishes
//! re-send an earlier event with the same id (what a retrying agent does).
//! `--wait-for-consumer NAME` then waits (up to 60 s) until that durable consumer, e.g. the
//! aggregator, has acknowledged everything in the stream.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use tally_ingest::synthetic::Fleet;
use tally_ingest::Publisher;
use tally_platform::args::ConfigArg;
use tally_platform::{config, streams, telemetry, NatsConfig, TelemetryConfig};

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
}

/// Synthetic agents publishing usage events to the JetStream stream for a while.
#[derive(Parser)]
#[command(name = "tally-agents", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    /// How many customers publish
    #[arg(long, value_name = "N", default_value_t = 3)]
    customers: usize,
    /// How many agents each customer has
    #[arg(long, value_name = "N", default_value_t = 2)]
    agents: usize,
    /// How long to publish
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    seconds: f64,
    /// Events per second over the whole fleet
    #[arg(long, value_name = "PER_SEC", default_value_t = 400.0)]
    rate: f64,
    /// The share of publishes, in [0, 1), that re-send an earlier event with the same id (what
    /// a retrying agent does)
    #[arg(long, value_name = "SHARE", default_value_t = 0.05)]
    duplicate_share: f64,
    /// Seed of the fleet's random choices
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Tag of this run in the events' ids [default: run<epoch ms>]
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// Then wait (up to 60 s) until this durable consumer, e.g. the aggregator, has
    /// acknowledged everything in the stream
    #[arg(long, value_name = "NAME")]
    wait_for_consumer: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: Config = config::load(&cli.config.path)?;
    cfg.nats.validate()?;
    telemetry::init_logs(&cfg.telemetry);
    let (customers, agents, seconds, rate) = (cli.customers, cli.agents, cli.seconds, cli.rate);
    let dup_share = cli.duplicate_share;
    anyhow::ensure!(
        (0.0..1.0).contains(&dup_share),
        "flag --duplicate-share must be in [0, 1)"
    );
    anyhow::ensure!(
        rate > 0.0 && seconds > 0.0,
        "flags --rate and --seconds must be positive"
    );
    let seed = cli.seed;
    let run_id = cli
        .run_id
        .unwrap_or_else(|| format!("run{}", chrono::Utc::now().timestamp_millis()));

    let mut fleet =
        Fleet::new("customer", customers, agents, &run_id, seed).context("building the fleet")?;
    let nats = streams::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(nats);
    streams::ensure(&js, &cfg.nats).await?;
    let mut publisher = Publisher::new(js.clone(), &cfg.nats.subject_prefix, 256);
    let started = Instant::now();
    let total = (rate * seconds).round() as u64;
    let mut sent = Vec::new();
    let mut resent = 0u64;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        if !sent.is_empty() && fleet.chance(dup_share) {
            resent += 1;
            let idx = fleet.pick(sent.len());
            publisher.publish(&sent[idx]).await?;
        } else {
            let event = fleet.next_event(chrono::Utc::now());
            publisher.publish(&event).await?;
            sent.push(event);
        }
    }
    let stats = publisher.flush().await?;
    println!(
        "published {total} events ({resent} re-sent with an earlier id) in {:.1}s: {} stored by JetStream, {} recognised as duplicates",
        started.elapsed().as_secs_f64(),
        stats.stored,
        stats.duplicates
    );
    if let Some(consumer) = &cli.wait_for_consumer {
        let drained =
            streams::wait_drained(&js, &cfg.nats.stream, consumer, Duration::from_secs(60)).await;
        anyhow::ensure!(
            drained,
            "consumer {consumer} did not acknowledge the stream within 60 s; is it running?"
        );
        println!("consumer {consumer} has committed and acknowledged every event");
    }
    Ok(())
}
