//! `tally-invoicer`: turns charges into invoices.
//! Usage: `tally-invoicer [serve|once|reconcile] [--config FILE] [--at RFC3339] [--out DIR]
//! [--format json|text]`; `tally-invoicer --help` describes each command and flag ([`Cli`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, FixedOffset};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tally_invoicer::api::{self, ApiState};
use tally_invoicer::numbering::Numbers;
use tally_invoicer::{render, Invoice, InvoicerConfig};
use tally_platform::args::ConfigArg;
use tally_platform::auth::Authenticator;
use tally_platform::clock::now_ms;
use tally_platform::{
    config, shutdown, store, streams, telemetry, ClickHouseConfig, NatsConfig, TelemetryConfig,
};

/// Turns charges into invoices.
///
/// The API takes bearer tokens from `api_tokens` (tally-access tokens-create), reloaded every
/// security.token_refresh_secs.
#[derive(Parser)]
#[command(name = "tally-invoicer", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a pass on every tick of invoicer.schedule and serves the API on invoicer.api_addr
    /// until SIGTERM (the default)
    Serve,
    /// Runs one pass and prints the invoices
    Once {
        /// The pass runs as of this instant [default: now]
        #[arg(long, value_name = "RFC3339")]
        at: Option<DateTime<FixedOffset>>,
        /// Also write <invoice_id>.json, .html and .pdf of each invoice into this directory
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// How the invoices are printed
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Prints the usage -> charges -> invoice lines report as JSON; exits non-zero when money
    /// differences are unexplained
    Reconcile {
        /// The report covers the 400 days before this instant [default: now]
        #[arg(long, value_name = "RFC3339")]
        at: Option<DateTime<FixedOffset>>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Text,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    clickhouse: ClickHouseConfig,
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    invoicer: InvoicerConfig,
    #[serde(default)]
    features: tally_platform::Features,
    #[serde(default)]
    security: tally_platform::SecurityConfig,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let shutdown = shutdown::on_signals();
    let mut cfg: Config = config::load(&cli.config.path)?;
    cfg.invoicer.features = cfg.features;
    cfg.clickhouse.validate()?;
    cfg.invoicer.validate()?;
    cfg.security.validate()?;
    telemetry::init_logs(&cfg.telemetry);
    let db = store::connect(&cfg.clickhouse);
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Reconcile { at } = command {
        let since = at.map_or_else(now_ms, |t| t.timestamp_millis()) - 400 * 86_400_000;
        let report = tally_invoicer::reconcile::run(&db, since).await?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        if report.difference_minor != 0 {
            anyhow::bail!(
                "reconciliation: {} minor units unexplained",
                report.difference_minor
            );
        }
        return Ok(());
    }
    let nats = streams::connect(&cfg.nats).await?;
    let numbers = Numbers::open_for(
        nats,
        &cfg.invoicer.numbers_bucket(&cfg.nats),
        cfg.nats.replicas,
        &cfg.clickhouse.database,
    )
    .await?;
    if let Command::Once { at, out, format } = command {
        let at = at.map_or_else(now_ms, |t| t.timestamp_millis());
        let invoices = tally_invoicer::invoice_pass(&db, Some(&numbers), &cfg.invoicer, at).await?;
        if let Some(dir) = out {
            write_files(&dir, &invoices)?;
        }
        match format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&invoices)?),
            Format::Text => invoices
                .iter()
                .for_each(|inv| println!("{}", render::text(inv))),
        }
        return Ok(());
    }
    telemetry::serve_metrics(cfg.invoicer.metrics_addr.parse()?)?;
    tally_invoicer::metrics::declare();
    let listener = tokio::net::TcpListener::bind(&cfg.invoicer.api_addr)
        .await
        .with_context(|| format!("binding invoicer.api_addr {}", cfg.invoicer.api_addr))?;
    let auth = Arc::new(Authenticator::new("invoicer", db.clone()));
    // without the tokens every request is refused (fail closed) until a refresh loads them
    match auth.reload().await {
        Ok(n) => tracing::info!(tokens = n, "api tokens loaded"),
        Err(e) => tracing::warn!(error = %e, "loading api tokens failed; retrying"),
    }
    let refresh = std::time::Duration::from_secs(cfg.security.token_refresh_secs);
    auth.refresh_every(refresh, shutdown.clone());
    let state = Arc::new(ApiState {
        db: db.clone(),
        numbers: numbers.clone(),
        cfg: cfg.invoicer.clone(),
        now_ms,
        auth,
    });
    let api = tokio::spawn(api::serve(listener, state, shutdown.clone()));
    tally_invoicer::run::run(db, numbers, cfg.invoicer, shutdown, now_ms).await;
    let _ = api.await;
    Ok(())
}

fn write_files(dir: &Path, invoices: &[Invoice]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for inv in invoices {
        let files = [
            ("json", serde_json::to_vec_pretty(inv)?),
            ("html", render::html(inv).into_bytes()),
            ("pdf", render::pdf(inv)?),
        ];
        for (ext, bytes) in files {
            let path = dir.join(format!("{}.{ext}", inv.invoice_id));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
