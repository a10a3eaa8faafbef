//! `tally-spend`: the live spend decider of one partition of the usage stream.
//! Usage: `tally-spend [serve] [--config FILE]`.
//!
//! Stands by until it holds the partition's lease (`[spend] partition`), rebuilds the live
//! book from storage and the live feed, then answers on NATS:
//! `<root>.authorize.<customer>.<agent>` (may this agent spend? a hold, or a denial with a
//! reason code) and `<root>.balance.<customer>` (spend of the period so far, holds, budgets),
//! and publishes budget threshold crossings on `<root>.alerts.<customer>`. Reads the catalog
//! the rater stored (`tally-rater` bootstraps it from the file). The HTTP API
//! (`spend.api_addr`) manages budgets and answers balances (API tokens, like every Tally API).
//! See docs/SPEND.md.

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tally_platform::args::ConfigArg;
use tally_platform::auth::Authenticator;
use tally_platform::clock::now_ms;
use tally_platform::{
    config, shutdown, store, streams, telemetry, ClickHouseConfig, NatsConfig, TelemetryConfig,
};
use tally_rater::live::api;
use tally_rater::live::run::{self, Spend};
use tally_rater::live::SpendConfig;
use tally_rater::store::CatalogSource;
use tally_rater::RaterConfig;

/// The live spend decider of one partition of the usage stream (see docs/SPEND.md).
///
/// Stands by until it holds the partition's lease (`[spend] partition`), rebuilds the live book
/// from storage and the live feed, then answers authorize and balance requests on NATS and
/// publishes budget threshold crossings; its HTTP API (spend.api_addr) manages budgets.
#[derive(Parser)]
#[command(name = "tally-spend", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum Command {
    /// Decides until SIGTERM (the default and only command)
    Serve,
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
    rater: RaterConfig,
    #[serde(default)]
    features: tally_platform::Features,
    #[serde(default)]
    spend: SpendConfig,
    #[serde(default)]
    security: tally_platform::SecurityConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        command: None | Some(Command::Serve),
        config: config_arg,
    } = Cli::parse();
    let cfg: Config = config::load(&config_arg.path)?;
    cfg.nats.validate()?;
    cfg.clickhouse.validate()?;
    cfg.rater.validate()?;
    cfg.spend.validate()?;
    cfg.security.validate()?;
    if let (Some(p), n) = (cfg.spend.partition, cfg.nats.partitions) {
        anyhow::ensure!(
            p < n,
            "setting `spend.partition` = {p}: the stream has {n} partitions (`nats.partitions`)"
        );
    }
    telemetry::init_logs(&cfg.telemetry);
    telemetry::serve_metrics(
        cfg.spend
            .metrics_addr
            .parse()
            .context("setting `spend.metrics_addr`")?,
    )?;
    let shutdown = shutdown::on_signals();
    let nats = streams::connect(&cfg.nats)
        .await
        .context("connecting to NATS")?;
    let db = store::connect(&cfg.clickhouse);
    let listener = tokio::net::TcpListener::bind(&cfg.spend.api_addr)
        .await
        .with_context(|| format!("setting `spend.api_addr`: binding {}", cfg.spend.api_addr))?;
    let auth = std::sync::Arc::new(Authenticator::new("spend", db.clone()));
    // without the tokens every request is refused (fail closed) until a refresh loads them
    match auth.reload().await {
        Ok(n) => tracing::info!(tokens = n, "api tokens loaded"),
        Err(e) => tracing::warn!(error = %e, "loading api tokens failed; retrying"),
    }
    auth.refresh_every(
        std::time::Duration::from_secs(cfg.security.token_refresh_secs),
        shutdown.clone(),
    );
    let api = std::sync::Arc::new(api::SpendApi {
        db: db.clone(),
        nats: nats.clone(),
        subject_root: cfg.spend.subject_root.clone(),
        auth,
        now_ms,
    });
    tokio::spawn(api::serve(listener, api, shutdown.clone()));
    let spend = Spend {
        db,
        nats,
        nats_cfg: cfg.nats,
        cfg: cfg.spend,
        source: CatalogSource {
            rater: cfg.rater,
            features: cfg.features,
        },
        now_ms,
    };
    run::run(spend, shutdown).await?;
    Ok(())
}
