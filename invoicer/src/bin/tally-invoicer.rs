//! `tally-invoicer`: turns charges into invoices.
//! Usage: `tally-invoicer [serve|once|reconcile] [--config FILE] [--at RFC3339] [--out DIR]
//! [--format json|text]`.
//! `serve` (default) runs a pass on every tick of `invoicer.schedule` and serves the API on
//! `invoicer.api_addr` until SIGTERM; `once` runs one pass as of `--at` (default now), prints
//! the invoices and, with `--out`, writes `<invoice_id>.json`, `.html` and `.pdf` for each; `reconcile` prints the usage → charges → invoice lines report as JSON and
//! exits non-zero when money differences are unexplained. The API takes bearer tokens from
//! `api_tokens` (`tally-access tokens-create`), reloaded every `security.token_refresh_secs`.

use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;
use tally_invoicer::api::{self, ApiState};
use tally_invoicer::numbering::Numbers;
use tally_invoicer::{render, Invoice, InvoicerConfig};
use tally_platform::args::Args;
use tally_platform::auth::Authenticator;
use tally_platform::{
    config, shutdown, store, streams, telemetry, ClickHouseConfig, NatsConfig, TelemetryConfig,
};

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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let shutdown = shutdown::on_signals();
    let (command, args) = Args::parse_command(
        std::env::args().skip(1),
        &["serve", "once", "reconcile"],
        &["config", "at", "out", "format"],
    )?;
    let mut cfg: Config = config::load(&config::path(&args))?;
    cfg.invoicer.features = cfg.features;
    cfg.clickhouse.validate()?;
    cfg.invoicer.validate()?;
    cfg.security.validate()?;
    telemetry::init_logs(&cfg.telemetry);
    let db = store::connect(&cfg.clickhouse);
    let at = match args.raw("at") {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .context("flag --at")?
            .timestamp_millis(),
        None => now_ms(),
    };
    if command == "reconcile" {
        let since = at - 400 * 86_400_000;
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
    if command == "once" {
        let invoices = tally_invoicer::invoice_pass(&db, Some(&numbers), &cfg.invoicer, at).await?;
        let format = args.raw("format").unwrap_or("json");
        if let Some(dir) = args.raw("out") {
            write_files(dir, &invoices)?;
        }
        match format {
            "json" => println!("{}", serde_json::to_string_pretty(&invoices)?),
            "text" => invoices
                .iter()
                .for_each(|inv| println!("{}", render::text(inv))),
            other => anyhow::bail!("flag --format: {other:?} is not json or text"),
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

fn write_files(dir: &str, invoices: &[Invoice]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    for inv in invoices {
        let files = [
            ("json", serde_json::to_vec_pretty(inv)?),
            ("html", render::html(inv).into_bytes()),
            ("pdf", render::pdf(inv)?),
        ];
        for (ext, bytes) in files {
            let path = std::path::Path::new(dir).join(format!("{}.{ext}", inv.invoice_id));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
