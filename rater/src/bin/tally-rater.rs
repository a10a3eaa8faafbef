//! `tally-rater`: prices committed usage into charges.
//! Usage: `tally-rater [serve|once] [--config FILE] [--at RFC3339]`, or
//! `tally-rater explain <charge_id> [--format text|json]`, or `tally-rater backfill
//! --import-id ID (--file FILE | --stream NAME --from-seq N --to-seq M) --from RFC3339 --to
//! RFC3339 --reason TEXT`; `tally-rater --help` describes each command and flag ([`Cli`]).

use anyhow::Context;
use chrono::{DateTime, FixedOffset};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tally_domain::meter::MeterSpec;
use tally_platform::args::ConfigArg;
use tally_platform::auth::Authenticator;
use tally_platform::clock::now_ms;
use tally_platform::{config, shutdown, store, telemetry, ClickHouseConfig, TelemetryConfig};
use tally_rater::bootstrap::FileCatalog;
use tally_rater::catalog::customers::CustomerSpec;
use tally_rater::catalog::fx::FxRateSpec;
use tally_rater::catalog::tax::TaxRateSpec;
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::rating::explain;
use tally_rater::store::CatalogSource;
use tally_rater::{api, Catalog, RaterConfig};

/// Prices committed usage into charges.
///
/// serve and once first append the file's meters, customers (with agents), tax and FX rates,
/// plan versions and subscriptions to the stored catalog (refusing changed ones, and file
/// meters that differ from the stored ones) and rate with everything stored. The API
/// (rater.api_addr) takes bearer tokens from `api_tokens` (tally-access tokens-create),
/// reloaded every security.token_refresh_secs.
#[derive(Parser)]
#[command(name = "tally-rater", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum Command {
    /// Rates every rater.interval_secs until SIGTERM (the default)
    Serve,
    /// Runs one pass and prints the charges as JSON lines
    Once {
        /// The pass runs as of this instant [default: now]
        #[arg(long, value_name = "RFC3339")]
        at: Option<DateTime<FixedOffset>>,
    },
    /// Prints one charge's usage windows, line arithmetic, rounding, discounts and tax; exits
    /// non-zero if they do not sum to the stored amounts
    Explain {
        /// The charge's id
        #[arg(value_name = "CHARGE_ID", required_unless_present = "charge")]
        charge_id: Option<String>,
        /// The charge's id, as a flag (the same as CHARGE_ID)
        #[arg(long, value_name = "CHARGE_ID", conflicts_with = "charge_id")]
        charge: Option<String>,
        /// How the explanation is printed
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Imports historical usage events (CloudEvents) for a named period, exactly once, and
    /// prints the report as JSON; the next rating pass prices them however old the period,
    /// and the invoicer bills them (an adjustment or a credit note naming the import where the
    /// period is finalized). Re-running an import changes nothing (docs/INGEST.md, Backfill)
    Backfill {
        /// The import's id ([A-Za-z0-9_-]{1,64}): re-running it changes nothing
        #[arg(long, value_name = "ID")]
        import_id: String,
        /// A file of CloudEvents, one JSON object a line (`-`: standard input)
        #[arg(long, value_name = "FILE", required_unless_present = "stream")]
        file: Option<std::path::PathBuf>,
        /// A JetStream stream to replay from: the usage stream (nats.stream), or the
        /// dead-letter stream (nats.dlq_stream), whose records are replayed from the usage
        /// stream's whole message
        #[arg(long, value_name = "NAME", conflicts_with = "file", requires_all = ["from_seq", "to_seq"])]
        stream: Option<String>,
        /// First stream sequence replayed
        #[arg(long, value_name = "N")]
        from_seq: Option<u64>,
        /// Last stream sequence replayed (inclusive)
        #[arg(long, value_name = "M")]
        to_seq: Option<u64>,
        /// The named period's start (inclusive): events before it are refused
        #[arg(long, value_name = "RFC3339")]
        from: DateTime<FixedOffset>,
        /// The named period's end (exclusive): events from it on are refused
        #[arg(long, value_name = "RFC3339")]
        to: DateTime<FixedOffset>,
        /// Why the usage is imported (recorded with each imported event)
        #[arg(long)]
        reason: String,
        /// Who imports, recorded as `cli:<ACTOR>`
        #[arg(long, value_name = "ACTOR", default_value = "operator")]
        actor: String,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// The one setting of `[aggregator]` the rater reads (the others are ignored here).
#[derive(Deserialize)]
struct AggregatorHorizon {
    #[serde(default = "default_dedup_horizon_secs")]
    dedup_horizon_secs: u64,
}

fn default_dedup_horizon_secs() -> u64 {
    tally_rater::backfill::HORIZON_SECS.unsigned_abs()
}

impl Default for AggregatorHorizon {
    fn default() -> Self {
        AggregatorHorizon {
            dedup_horizon_secs: default_dedup_horizon_secs(),
        }
    }
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    clickhouse: ClickHouseConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    rater: RaterConfig,
    #[serde(default)]
    meters: Vec<MeterSpec>,
    #[serde(default)]
    customers: Vec<CustomerSpec>,
    #[serde(default)]
    plans: Vec<PlanSpec>,
    #[serde(default)]
    subscriptions: Vec<SubscriptionSpec>,
    #[serde(default)]
    tax_rates: Vec<TaxRateSpec>,
    #[serde(default)]
    fx_rates: Vec<FxRateSpec>,
    #[serde(default)]
    features: tally_platform::Features,
    #[serde(default)]
    security: tally_platform::SecurityConfig,
    /// For `backfill --stream`.
    #[serde(default)]
    nats: tally_platform::NatsConfig,
    /// For backfill: the aggregator's dedup horizon (its other settings are not the rater's).
    #[serde(default)]
    aggregator: AggregatorHorizon,
}

impl Config {
    /// The catalog sections of the file.
    fn file(&self) -> FileCatalog<'_> {
        FileCatalog {
            meters: &self.meters,
            customers: &self.customers,
            plans: &self.plans,
            subscriptions: &self.subscriptions,
            tax_rates: &self.tax_rates,
            fx_rates: &self.fx_rates,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: Config = config::load(&cli.config.path)?;
    cfg.clickhouse.validate()?;
    cfg.rater.validate()?;
    cfg.security.validate()?;
    // the file alone must be valid (its errors name its settings) before it is stored
    cfg.file().check(&cfg.rater)?;
    telemetry::init_logs(&cfg.telemetry);
    let db = store::connect(&cfg.clickhouse);
    let source = CatalogSource {
        rater: cfg.rater.clone(),
        features: cfg.features,
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Explain {
        charge_id,
        charge,
        format,
    } = command
    {
        let id = charge_id.or(charge).context("explain needs a charge id")?;
        return explain_charge(&db, &id, format).await;
    }
    cfg.file().bootstrap(&db, now_ms()).await?;
    let catalog = source.current(&db).await.context("the stored catalog")?;
    match command {
        Command::Backfill {
            import_id,
            file,
            stream,
            from_seq,
            to_seq,
            from,
            to,
            reason,
            actor,
        } => {
            let import = tally_rater::backfill::Import {
                import_id,
                from_ms: from.timestamp_millis(),
                to_ms: to.timestamp_millis(),
                reason,
                actor: format!("cli:{actor}"),
                now_ms: now_ms(),
            };
            backfill(
                &db,
                (&cfg.nats, cfg.aggregator.dedup_horizon_secs),
                import,
                file,
                stream.zip(from_seq.zip(to_seq)),
            )
            .await
        }
        Command::Once { at } => once(&db, &catalog, &cfg.rater, at).await,
        Command::Serve | Command::Explain { .. } => serve(cfg, db, catalog, source).await,
    }
}

/// `tally-rater explain`: prints the explanation; exits non-zero if it does not balance.
async fn explain_charge(db: &clickhouse::Client, id: &str, format: Format) -> anyhow::Result<()> {
    let (charge, windows) = explain::load(db, id).await?;
    // the stored meters, as the API's explain reads them (another process may have stored
    // newer versions than the file's)
    let stored = tally_rater::store::registry::meters(db)
        .await
        .context("the stored meters")?;
    let sums = explain::windows_sum_to_quantity(&stored, &charge.meter);
    let e = explain::explain(&charge, windows, sums)?;
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        for w in &e.windows {
            println!(
                "  window {} agent {} {}: {}",
                w.window_start, w.agent, w.group_key, w.quantity
            );
        }
        for line in &e.lines {
            println!("{line}");
        }
    }
    anyhow::ensure!(e.balanced, "charge {id} does not balance");
    Ok(())
}

/// `tally-rater once`: one pass as of `at` (default now), the charges as JSON lines.
async fn once(
    db: &clickhouse::Client,
    catalog: &Catalog,
    rater: &RaterConfig,
    at: Option<DateTime<FixedOffset>>,
) -> anyhow::Result<()> {
    let at = at.map_or_else(now_ms, |t| t.timestamp_millis());
    let report = tally_rater::rate_once(db, catalog, rater, at).await?;
    for c in &report.charges {
        println!("{}", serde_json::to_string(c)?);
    }
    eprintln!(
        "rated {} usage windows into {} charges",
        report.usage_rows,
        report.charges.len()
    );
    Ok(())
}

/// `tally-rater serve`: the metrics endpoint, the API (when `rater.api_addr` is set) and a
/// pass every `rater.interval_secs` until SIGTERM.
async fn serve(
    cfg: Config,
    db: clickhouse::Client,
    catalog: Catalog,
    source: CatalogSource,
) -> anyhow::Result<()> {
    telemetry::serve_metrics(cfg.rater.metrics_addr.parse()?)?;
    let shutdown = shutdown::on_signals();
    if let Some(addr) = &cfg.rater.api_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("setting `rater.api_addr`: binding {addr}"))?;
        let auth = std::sync::Arc::new(Authenticator::new("rater", db.clone()));
        // without the tokens every request is refused (fail closed) until a refresh loads them
        match auth.reload().await {
            Ok(n) => tracing::info!(tokens = n, "api tokens loaded"),
            Err(e) => tracing::warn!(error = %e, "loading api tokens failed; retrying"),
        }
        let refresh = std::time::Duration::from_secs(cfg.security.token_refresh_secs);
        auth.refresh_every(refresh, shutdown.clone());
        let state = std::sync::Arc::new(api::ApiState {
            source: source.clone(),
            db: db.clone(),
            now_ms,
            auth,
            backfill_horizon_secs: cfg.aggregator.dedup_horizon_secs,
        });
        tokio::spawn(api::serve(listener, state, shutdown.clone()));
    }
    tally_rater::run::run(db, catalog, source, cfg.rater, shutdown, now_ms).await;
    Ok(())
}

/// `tally-rater backfill`: imports the file or the stream range and prints the report; exits
/// non-zero when storage failed (re-run it: what was imported stays imported once).
async fn backfill(
    db: &clickhouse::Client,
    (nats, horizon_secs): (&tally_platform::NatsConfig, u64),
    import: tally_rater::backfill::Import,
    file: Option<std::path::PathBuf>,
    stream: Option<(String, (u64, u64))>,
) -> anyhow::Result<()> {
    let mut importer = tally_rater::store::backfill::Importer::start(db, import).await?;
    importer.set_horizon_secs(horizon_secs);
    let done = match (file, stream) {
        (Some(path), _) if path.as_os_str() == "-" => {
            importer
                .add_lines(tokio::io::BufReader::new(tokio::io::stdin()))
                .await
        }
        (Some(path), _) => {
            let f = tokio::fs::File::open(&path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            importer.add_lines(tokio::io::BufReader::new(f)).await
        }
        (None, Some((name, range))) => {
            nats.validate()?;
            let client = tally_platform::streams::connect(nats).await?;
            let js = async_nats::jetstream::new(client);
            importer.add_stream(&js, &name, &nats.stream, range).await
        }
        (None, None) => anyhow::bail!("backfill needs --file or --stream"),
    };
    let done = match done {
        Ok(()) => importer.flush().await.map_err(Into::into),
        Err(e) => Err(e),
    };
    println!("{}", serde_json::to_string_pretty(importer.report())?);
    done.context("the import stopped; re-run it to finish (nothing is imported twice)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Config {
        config::from_str_with_env(text, std::path::Path::new("test.toml"), Vec::new())
            .expect("a valid configuration")
    }

    /// The backfill's match horizon is the aggregator's `dedup_horizon_secs` of the same file
    /// (the other aggregator settings ignored here); without it, the aggregator's default.
    #[test]
    fn the_backfill_horizon_is_the_aggregators_dedup_horizon() {
        let week = parsed(
            "[aggregator]\nbatch_max_events = 50000\ndedup_horizon_secs = 604800\n\
             [rater]\ndefault_plan = \"p\"\n",
        );
        assert_eq!(week.aggregator.dedup_horizon_secs, 604_800);
        let none = parsed("[rater]\ndefault_plan = \"p\"\n");
        assert_eq!(none.aggregator.dedup_horizon_secs, 86_400);
        let shipped = parsed(include_str!("../../../config/profiles/production.toml"));
        assert_eq!(shipped.aggregator.dedup_horizon_secs, 604_800);
    }
}
