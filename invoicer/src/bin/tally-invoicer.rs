//! `tally-invoicer`: turns charges into invoices.
//! Usage: `tally-invoicer [serve|once] [--config FILE] [--at RFC3339] [--out DIR] [--format json|text]`.
//! `serve` (default) invoices every `invoicer.interval_secs` until SIGTERM; `once` runs one
//! pass as of `--at` (default now), prints the invoices as JSON and, with `--out`, writes
//! one `<invoice_id>.json` file each.

use anyhow::Context;
use serde::Deserialize;
use tally_invoicer::InvoicerConfig;
use tally_platform::args::Args;
use tally_platform::{config, shutdown, store, telemetry, ClickHouseConfig, TelemetryConfig};

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    clickhouse: ClickHouseConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    invoicer: InvoicerConfig,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let (command, args) = Args::parse_command(
        std::env::args().skip(1),
        &["serve", "once"],
        &["config", "at", "out", "format"],
    )?;
    let cfg: Config = config::load(&config::path(&args))?;
    cfg.clickhouse.validate()?;
    cfg.invoicer.validate()?;
    telemetry::init_logs(&cfg.telemetry);
    let db = store::connect(&cfg.clickhouse);
    if command == "once" {
        let at = match args.raw("at") {
            Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                .context("flag --at")?
                .timestamp_millis(),
            None => now_ms(),
        };
        let invoices = tally_invoicer::invoice_once(&db, &cfg.invoicer, at).await?;
        if let Some(dir) = args.raw("out") {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
            for inv in &invoices {
                let path = std::path::Path::new(dir).join(format!("{}.json", inv.invoice_id));
                std::fs::write(&path, serde_json::to_vec_pretty(inv)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        match args.raw("format").unwrap_or("json") {
            "json" => println!("{}", serde_json::to_string_pretty(&invoices)?),
            "text" => invoices
                .iter()
                .for_each(|inv| println!("{}", tally_invoicer::render::text(inv))),
            other => anyhow::bail!("flag --format: {other:?} is not json or text"),
        }
        return Ok(());
    }
    telemetry::serve_metrics(cfg.invoicer.metrics_addr.parse()?)?;
    tally_invoicer::run::run(db, cfg.invoicer, shutdown::on_signals(), now_ms).await;
    Ok(())
}
