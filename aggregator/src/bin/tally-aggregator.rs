//! `tally-aggregator`: runs the aggregator until SIGTERM.
//! Usage: `tally-aggregator [--config FILE]`.

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use tally_aggregator::AggregatorConfig;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_platform::args::ConfigArg;
use tally_platform::{
    config, shutdown, store, streams, telemetry, ClickHouseConfig, NatsConfig, TelemetryConfig,
};

/// mimalloc: the per-event allocations of parsing and batching cost about a third less than
/// with the system allocator (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Commits usage from the JetStream stream into ClickHouse exactly once, windowed per meter,
/// until SIGTERM.
#[derive(Parser)]
#[command(name = "tally-aggregator", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    clickhouse: ClickHouseConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    aggregator: AggregatorConfig,
    #[serde(default)]
    meters: Vec<MeterSpec>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // first after the command line, so a SIGTERM at any point after start-up begins is a
    // clean stop
    let stop = shutdown::on_signals();
    let cfg: Config = config::load(&cli.config.path)?;
    cfg.nats.validate()?;
    cfg.clickhouse.validate()?;
    cfg.aggregator.validate()?;
    cfg.aggregator.validate_with(&cfg.nats)?;
    let meters = validate_meters(cfg.meters).context("setting `meters`")?;
    anyhow::ensure!(
        !meters.is_empty(),
        "setting `meters`: no meter is declared, every event would be refused"
    );
    telemetry::init_logs(&cfg.telemetry);
    tally_aggregator::crash::arm_from_env();
    telemetry::serve_metrics(cfg.aggregator.metrics_addr.parse()?)?;
    let nats = streams::connect(&cfg.nats).await?;
    let db = store::connect(&cfg.clickhouse);
    tally_aggregator::run(nats, db, &cfg.nats, &cfg.aggregator, meters, stop).await?;
    Ok(())
}
