//! `tally-migrate`: applies the ClickHouse migrations to the configured database.
//! Usage: `tally-migrate [--config FILE]` (default `TALLY_CONFIG` or `config/tally.toml`).

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use tally_platform::args::ConfigArg;
use tally_platform::{config, migrate, ClickHouseConfig, TelemetryConfig};

/// Applies the ClickHouse migrations (embedded, numbered) that the configured database lacks.
#[derive(Parser)]
#[command(name = "tally-migrate", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    clickhouse: ClickHouseConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: Config = config::load(&cli.config.path)?;
    cfg.clickhouse.validate()?;
    tally_platform::telemetry::init_logs(&cfg.telemetry);
    let applied = migrate::apply(&cfg.clickhouse).await.with_context(|| {
        format!(
            "migrating database {} at {}",
            cfg.clickhouse.database, cfg.clickhouse.url
        )
    })?;
    if applied.is_empty() {
        println!(
            "database {}: up to date ({} migrations)",
            cfg.clickhouse.database,
            migrate::MIGRATIONS.len()
        );
    } else {
        println!(
            "database {}: applied migrations {:?}",
            cfg.clickhouse.database, applied
        );
    }
    Ok(())
}
