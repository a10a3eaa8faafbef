//! `tally-gateway`: the HTTP ingest gateway and its key management.
//!
//! ```text
//! tally-gateway [serve] [--config FILE]
//! tally-gateway keys-create --customer ID [--agents a,b] [--label TEXT] [--config FILE]
//! tally-gateway keys-list [--config FILE]
//! tally-gateway keys-revoke --key-id ID [--config FILE]
//! tally-gateway nats-config --customers a,b [--invoice-bucket NAME] [--out-dir DIR] [--config FILE]
//! ```
//! `serve` reads `[nats]`, `[clickhouse]`, `[telemetry]` and `[ingest]`; SIGTERM stops
//! accepting, finishes in-flight requests and exits.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tally_ingest::gateway::admin::KeyView;
use tally_ingest::gateway::{self, key_store, IngestConfig};
use tally_ingest::nats_auth;
use tally_platform::args::ConfigArg;
use tally_platform::private_file::write_private;
use tally_platform::{
    config, shutdown, store, streams, telemetry, ClickHouseConfig, NatsConfig, TelemetryConfig,
};

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    nats: NatsConfig,
    #[serde(default)]
    clickhouse: ClickHouseConfig,
    #[serde(default)]
    telemetry: TelemetryConfig,
    #[serde(default)]
    ingest: IngestConfig,
}

/// The HTTP ingest gateway and its API keys.
///
/// serve reads [nats], [clickhouse], [telemetry] and [ingest]; SIGTERM stops accepting,
/// finishes in-flight requests and exits.
#[derive(Parser)]
#[command(name = "tally-gateway", version)]
struct Cli {
    /// What to do [default: serve]
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the ingest API until SIGTERM (the default)
    Serve,
    /// Creates an API key and prints it once (only its hash is stored)
    KeysCreate {
        /// The customer the key publishes for
        #[arg(long, value_name = "ID")]
        customer: String,
        /// The only agents the key may publish for, comma-separated [default: any agent]
        #[arg(long, value_name = "a,b")]
        agents: Option<String>,
        /// A note kept with the key
        #[arg(long, value_name = "TEXT", default_value = "")]
        label: String,
    },
    /// Lists the API keys (never a secret)
    KeysList,
    /// Revokes an API key
    KeysRevoke {
        /// The key's id, as keys-list shows it
        #[arg(long, value_name = "ID")]
        key_id: String,
    },
    /// Writes nats-auth.conf (one NATS user per customer and per service) and
    /// nats-credentials.txt
    NatsConfig {
        /// The customers that get a NATS user, comma-separated
        #[arg(long, value_name = "a,b")]
        customers: String,
        /// The invoice numbers' KV bucket [default: the one the configuration names]
        #[arg(long, value_name = "NAME")]
        invoice_bucket: Option<String>,
        /// Where the two files are written (mode 0600)
        #[arg(long, value_name = "DIR", default_value = ".")]
        out_dir: PathBuf,
    },
}

/// `a, b,` as `["a", "b"]`.
fn list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: Config = config::load(&cli.config.path)?;
    cfg.nats.validate()?;
    cfg.clickhouse.validate()?;
    cfg.ingest.validate()?;
    telemetry::init_logs(&cfg.telemetry);
    let now_ms = chrono::Utc::now().timestamp_millis();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cfg).await,
        Command::KeysCreate {
            customer,
            agents,
            label,
        } => {
            let scope =
                key_store::scope_from(&customer, &list(agents.as_deref().unwrap_or("")), &label)?;
            let db = store::connect(&cfg.clickhouse);
            let (token, record) = key_store::create(&db, scope, &label, now_ms).await?;
            let mut view = KeyView::from(&record);
            view.key = Some(token);
            println!("{}", serde_json::to_string_pretty(&view)?);
            eprintln!("store the key now: only its hash is kept");
            Ok(())
        }
        Command::KeysList => {
            let db = store::connect(&cfg.clickhouse);
            for r in key_store::load(&db).await? {
                println!("{}", serde_json::to_string(&KeyView::from(&r))?);
            }
            Ok(())
        }
        Command::KeysRevoke { key_id } => {
            let db = store::connect(&cfg.clickhouse);
            let r = key_store::revoke(&db, &key_id, now_ms).await?;
            println!("{}", serde_json::to_string(&KeyView::from(&r))?);
            Ok(())
        }
        Command::NatsConfig {
            customers,
            invoice_bucket,
            out_dir,
        } => nats_config(&cfg, &list(&customers), invoice_bucket, &out_dir),
    }
}

fn nats_config(
    cfg: &Config,
    customers: &[String],
    invoice_bucket: Option<String>,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(!customers.is_empty(), "flag --customers a,b is required");
    let refs: Vec<&str> = customers.iter().map(String::as_str).collect();
    let bucket = invoice_bucket.unwrap_or_else(|| cfg.nats.invoice_numbers_bucket());
    let users = nats_auth::users_with_bucket(&refs, &bucket)?;
    let conf = dir.join("nats-auth.conf");
    let creds = dir.join("nats-credentials.txt");
    write_private(
        &conf,
        &nats_auth::render(
            &users,
            &nats_auth::Names {
                prefix: &cfg.nats.subject_prefix,
                dlq_prefix: &cfg.nats.dlq_subject_prefix,
                stream: &cfg.nats.stream,
                spend_root: &cfg.ingest.spend_subject_root,
            },
        ),
    )
    .with_context(|| format!("writing {}", conf.display()))?;
    let lines: String = users
        .iter()
        .map(|u| format!("{} {}\n", u.user, u.password))
        .collect();
    write_private(&creds, &lines).with_context(|| format!("writing {}", creds.display()))?;
    println!(
        "wrote {} and {} (user password per line)",
        conf.display(),
        creds.display()
    );
    Ok(())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    telemetry::serve_metrics(cfg.ingest.metrics_addr.parse()?)?;
    let nats = streams::connect(&cfg.nats).await?;
    let js = async_nats::jetstream::new(nats);
    streams::ensure(&js, &cfg.nats).await?;
    let db = store::connect(&cfg.clickhouse);
    let addr = cfg.ingest.listen()?;
    let pseudonyms = match cfg.ingest.pseudonym_key_file.as_str() {
        "" => None,
        path => Some(tally_ingest::pseudonym::Pseudonymizer::from_file(
            std::path::Path::new(path),
        )?),
    };
    let mut gw = gateway::Gateway::new(cfg.ingest, js, &cfg.nats.subject_prefix, Some(db));
    if let Some(p) = pseudonyms {
        tracing::info!("customer and agent ids are pseudonymized before publishing");
        gw = gw.with_pseudonyms(p);
    }
    let gw = Arc::new(gw);
    let keys = gateway::server::load_keys(&gw)
        .await
        .context("loading API keys (run tally-migrate first)")?;
    let stop = shutdown::on_signals();
    let running = gateway::start(gw, addr, stop.clone()).await?;
    tracing::info!(addr = %running.addr, keys, "gateway listening");
    stop.cancelled().await;
    running.stop().await;
    tracing::info!("gateway stopped");
    Ok(())
}
