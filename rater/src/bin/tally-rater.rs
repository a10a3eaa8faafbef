//! `tally-rater`: prices committed usage into charges.
//! Usage: `tally-rater [serve|once] [--config FILE] [--at RFC3339]`, or
//! `tally-rater explain <charge_id> [--format text|json]`, or `tally-rater backfill
//! --import-id ID (--file FILE | --stream NAME --from-seq N --to-seq M) --from RFC3339 --to
//! RFC3339 --reason TEXT`; `tally-rater --help` describes each command and flag ([`Cli`]).

use anyhow::Context;
use chrono::{DateTime, FixedOffset};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_platform::args::ConfigArg;
use tally_platform::auth::Authenticator;
use tally_platform::clock::now_ms;
use tally_platform::{config, shutdown, store, telemetry, ClickHouseConfig, TelemetryConfig};
use tally_rater::catalog::customers::CustomerSpec;
use tally_rater::catalog::fx::{FxRateSpec, FxTable};
use tally_rater::catalog::registry::Registry;
use tally_rater::catalog::tax::{TaxRateSpec, TaxTable};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::rating::explain;
use tally_rater::store::{
    catalog as catalog_store, rates as rates_store, registry as registry_store,
};
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: Config = config::load(&cli.config.path)?;
    cfg.clickhouse.validate()?;
    cfg.rater.validate()?;
    cfg.security.validate()?;
    let meters = validate_meters(cfg.meters.clone()).context("setting `meters`")?;
    let mut declared = Registry::default();
    for (i, c) in cfg.customers.iter().enumerate() {
        declared.add_customer(c, &format!("customers[{i}]"))?;
    }
    TaxTable::new(cfg.tax_rates.clone())?;
    FxTable::new(cfg.fx_rates.clone())?;
    // the file alone must be valid (its errors name its settings) before it is stored; that
    // taxed and converted subscriptions have rates is checked against the stored rates, which
    // the API may have completed
    Catalog::new(
        cfg.plans.clone(),
        cfg.subscriptions.clone(),
        &cfg.rater,
        &meters,
    )?;
    telemetry::init_logs(&cfg.telemetry);
    let db = store::connect(&cfg.clickhouse);
    let source = catalog_store::CatalogSource {
        rater: cfg.rater.clone(),
        features: cfg.features,
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let catalog = if let Command::Explain { .. } = command {
        Catalog::default()
    } else {
        let registered =
            registry_store::bootstrap(&db, &cfg.customers, &cfg.meters, now_ms()).await?;
        tracing::info!(
            meters = registered.meters,
            customers = registered.customers,
            agents = registered.agents,
            "customers and meters bootstrapped from the file"
        );
        let rates = rates_store::bootstrap(&db, &cfg.tax_rates, &cfg.fx_rates, now_ms()).await?;
        tracing::info!(
            tax_rates = rates.tax_rates,
            fx_rates = rates.fx_rates,
            "tax and fx rates bootstrapped from the file"
        );
        let added = catalog_store::bootstrap(&db, &cfg.plans, &cfg.subscriptions, now_ms()).await?;
        tracing::info!(
            plans = added.plans_appended,
            subscriptions = added.subscriptions_appended,
            "catalog bootstrapped from the file"
        );
        source.current(&db).await.context("the stored catalog")?
    };
    if let Command::Explain {
        charge_id,
        charge,
        format,
    } = command
    {
        let id = charge_id.or(charge).context("explain needs a charge id")?;
        let (charge, windows) = explain::load(&db, &id).await?;
        // the stored meters, as the API's explain reads them (the file's were bootstrapped
        // into the store above, but another process may have stored newer versions)
        let stored = registry_store::meters(&db)
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
        return Ok(());
    }
    if let Command::Backfill {
        import_id,
        file,
        stream,
        from_seq,
        to_seq,
        from,
        to,
        reason,
        actor,
    } = command
    {
        return backfill(
            &db,
            &cfg.nats,
            tally_rater::backfill::Import {
                import_id,
                from_ms: from.timestamp_millis(),
                to_ms: to.timestamp_millis(),
                reason,
                actor: format!("cli:{actor}"),
                now_ms: now_ms(),
            },
            file,
            stream.zip(from_seq.zip(to_seq)),
        )
        .await;
    }
    if let Command::Once { at } = command {
        let at = at.map_or_else(now_ms, |t| t.timestamp_millis());
        let report = tally_rater::rate_once(&db, &catalog, &cfg.rater, at).await?;
        for c in &report.charges {
            println!("{}", serde_json::to_string(c)?);
        }
        eprintln!(
            "rated {} usage windows into {} charges",
            report.usage_rows,
            report.charges.len()
        );
        return Ok(());
    }
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
    nats: &tally_platform::NatsConfig,
    import: tally_rater::backfill::Import,
    file: Option<std::path::PathBuf>,
    stream: Option<(String, (u64, u64))>,
) -> anyhow::Result<()> {
    let mut importer = tally_rater::store::backfill::Importer::start(db, import).await?;
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
