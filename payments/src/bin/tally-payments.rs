//! `tally-payments`: payments, ledger, dunning and the customer portal.
//!
//! Usage: `tally-payments [serve|trial-balance|sync-ledger|dunning-once|collect-once|portal-link|collect-request|endpoint-secret|revenue|index-ledger]
//! [--config FILE] [--customer ID] [--invoice ID] [--from T --to T]`; `tally-payments --help` describes each
//! command and flag ([`Cli`]).
//!
//! Secrets are judged for `[security] profile` before anything starts (weak or published ones
//! refused outside `dev`); in `dev`, a webhook, portal or dunning secret left unset is made up
//! at random for this process (and logged as such). The `/v1` API takes the API tokens of
//! `tally-access tokens-create`. It never prints a secret but the one `endpoint-secret` is
//! asked for: configuration errors name the setting only.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_payments::bootstrap::Config;
use tally_payments::config::{DunningConfig, PaymentsConfig};
use tally_payments::gateway::stripe::Stripe;
use tally_payments::gateway::{Collect, Gateway};
use tally_payments::http::{self, AppState};
use tally_payments::settle::Settler;
use tally_payments::signature::Secret;
use tally_payments::{collect, delivery, dunning, metrics, portal, profiles, spend_alerts, store};
use tally_platform::args::ConfigArg;
use tally_platform::auth::Authenticator;
use tally_platform::clock::now_ms;
use tally_platform::secrets;
use tally_platform::shutdown::{Shutdown, Ticker};
use tally_platform::{config, shutdown, telemetry};
use tokio::task::JoinSet;

/// Payments, ledger, dunning and the customer portal.
///
/// The /v1 API takes the API tokens of tally-access tokens-create. Secrets are judged for
/// [security] profile before anything starts; in dev, a webhook, portal or dunning secret left
/// unset is made up at random for this process.
#[derive(Parser)]
#[command(name = "tally-payments", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Subcommand)]
enum Command {
    /// The HTTP server (webhooks, API, portal), the ledger sync every payments.ledger_sync_secs
    /// (then, with payments.stripe_api_key, a collection pass), with the dunning feature the
    /// dunning scheduler, with payments.spend_alerts the spend alerts as signed notifications
    /// and, with invoice_delivery.enabled, each finalized invoice emailed and sent as a signed
    /// webhook (the default)
    Serve,
    /// Prints debits and credits per currency and account; exits 1 unless every currency's
    /// difference is zero
    TrialBalance,
    /// Posts what the ledger is missing once (finalized invoices, voids, credit notes) and runs
    /// the wallet pass
    SyncLedger,
    /// One dunning pass (notices decided and delivered; with payments.stripe_api_key, due
    /// payment retries sent to Stripe), printed as JSON
    DunningOnce,
    /// One collection pass (PaymentIntents for finalized invoices of customers with a Stripe
    /// payment profile), printed as JSON; needs payments.stripe_api_key
    CollectOnce,
    /// Prints a signed, expiring portal link
    PortalLink {
        /// The customer the link is for: [A-Za-z0-9_-]{1,64}
        #[arg(long, value_name = "ID")]
        customer: String,
    },
    /// Prints the Stripe PaymentIntent request that collects an invoice
    CollectRequest {
        /// The invoice's id
        #[arg(long, value_name = "ID")]
        invoice: String,
    },
    /// The revenue report from the ledger: billed, collected, credited and outstanding per
    /// period and currency for journals posted in [--from, --to); exits 1 unless every row
    /// reconciles with the receivable
    Revenue {
        /// Start of the range, included: YYYY-MM-DD (midnight UTC) or RFC 3339
        #[arg(long, value_name = "TIME")]
        from: String,
        /// End of the range, excluded: YYYY-MM-DD (midnight UTC) or RFC 3339
        #[arg(long, value_name = "TIME")]
        to: String,
        /// Only this currency (ISO 4217, upper case)
        #[arg(long, value_name = "CODE")]
        currency: Option<String>,
        /// How the range is divided (UTC)
        #[arg(long, value_enum, default_value = "month")]
        period: tally_payments::revenue::Granularity,
        /// json (the API's document) or table
        #[arg(long, default_value = "json", value_parser = ["json", "table"])]
        format: String,
    },
    /// Copies journals posted before migration 0052 into ledger_entries_by_time (what the
    /// revenue report reads); running it again copies nothing more
    IndexLedger,
    /// Prints the secret a customer's notification receiver verifies Tally-Signature with
    /// (derived from dunning.signing_secret; hand it to that customer only)
    EndpointSecret {
        /// The customer whose secret is printed
        #[arg(long, value_name = "ID")]
        customer: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = shutdown::on_signals();
    let cfg: Config = config::load(&cli.config.path)?;
    cfg.clickhouse.validate()?;
    cfg.security.validate()?;
    telemetry::init_logs(&cfg.telemetry);
    let db = tally_platform::store::connect(&cfg.clickhouse);
    match cli.command.unwrap_or(Command::Serve) {
        Command::TrialBalance => trial_balance(&db).await,
        Command::SyncLedger => sync_ledger(&db).await,
        Command::DunningOnce => dunning_once(&cfg, &db).await,
        Command::CollectOnce => collect_once(&cfg, &db).await,
        Command::EndpointSecret { customer } => endpoint_secret(&cfg, &customer),
        Command::PortalLink { customer } => portal_link(&cfg, &customer),
        Command::CollectRequest { invoice } => collect_request(&cfg, &db, &invoice).await,
        Command::Revenue {
            from,
            to,
            currency,
            period,
            format,
        } => revenue(&db, &from, &to, currency.as_deref(), period, &format).await,
        Command::IndexLedger => {
            let n = store::index_ledger(&db).await?;
            println!("{n} ledger lines copied to ledger_entries_by_time");
            Ok(())
        }
        Command::Serve => serve(cfg, db, stop).await,
    }
}

async fn trial_balance(db: &clickhouse::Client) -> anyhow::Result<()> {
    let tb = store::trial_balance(db)
        .await
        .context("reading the ledger")?;
    print!("{}", tb.render());
    if !tb.is_balanced() {
        anyhow::bail!("the ledger is not balanced");
    }
    Ok(())
}

async fn sync_ledger(db: &clickhouse::Client) -> anyhow::Result<()> {
    let n = Settler::new(db.clone()).sync_ledger(now_ms()).await?;
    println!("{n} journals posted");
    let w = tally_payments::wallet::pass::run(db, now_ms()).await?;
    println!(
        "wallets: {} movements, {} journals, {} customers failed",
        w.movements, w.journals, w.failed
    );
    Ok(())
}

async fn dunning_once(cfg: &Config, db: &clickhouse::Client) -> anyhow::Result<()> {
    cfg.dunning.validate(cfg.security.profile)?;
    let api = retry_api(&cfg.payments);
    let r = dunning::pass(db, &cfg.dunning, api.as_ref(), now_ms()).await?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

async fn collect_once(cfg: &Config, db: &clickhouse::Client) -> anyhow::Result<()> {
    let api = retry_api(&cfg.payments)
        .context("collect-once needs payments.stripe_api_key (TALLY_PAYMENTS__STRIPE_API_KEY)")?;
    let r = collect::pass(db, &api, collect_policy(&cfg.dunning), now_ms()).await?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn endpoint_secret(cfg: &Config, customer: &str) -> anyhow::Result<()> {
    secrets::check(
        "dunning.signing_secret",
        &cfg.dunning.signing_secret,
        cfg.security.profile,
    )?;
    println!(
        "{}",
        dunning::deliver::endpoint_secret_hex(cfg.dunning.signing_secret.expose(), customer)
    );
    Ok(())
}

fn portal_link(cfg: &Config, customer: &str) -> anyhow::Result<()> {
    cfg.portal.validate(cfg.security.profile)?;
    let expires = now_ms().div_euclid(1000) + cfg.portal.link_ttl_secs;
    let secret = Secret::new(cfg.portal.signing_secret.expose());
    let token = portal::link::token(&secret, customer, expires)
        .context("--customer must be [A-Za-z0-9_-]{1,64}")?;
    println!(
        "{}/portal/{token}",
        cfg.portal.base_url.trim_end_matches('/')
    );
    Ok(())
}

async fn collect_request(
    cfg: &Config,
    db: &clickhouse::Client,
    invoice: &str,
) -> anyhow::Result<()> {
    let inv = store::invoice(db, invoice)
        .await?
        .context("no such invoice")?;
    let profile = profiles::of(db, inv.customer.as_str()).await?;
    let (pc, pm) = profile
        .as_ref()
        .map(|p| (p.provider_customer.as_str(), p.payment_method.as_str()))
        .unwrap_or_default();
    let stripe = Stripe::new(cfg.payments.stripe_webhook_secret.expose(), 300);
    let req = stripe.collect_request(&Collect {
        invoice_id: &inv.invoice_id,
        customer: &inv.customer,
        amount_minor: inv.amount_due_minor,
        currency: inv.currency,
        attempt: 0,
        provider_customer: pc,
        payment_method: pm,
    });
    println!("{}", serde_json::to_string_pretty(&req)?);
    Ok(())
}

async fn revenue(
    db: &clickhouse::Client,
    from: &str,
    to: &str,
    currency: Option<&str>,
    period: tally_payments::revenue::Granularity,
    format: &str,
) -> anyhow::Result<()> {
    let q = tally_payments::revenue::Query {
        period,
        ..tally_payments::revenue::Query::parse(Some(from), Some(to), None, currency)?
    };
    let r = tally_payments::revenue::run(db, &q).await?;
    if format == "table" {
        print!("{}", tally_payments::revenue::render(&r));
    } else {
        println!("{}", serde_json::to_string_pretty(&r)?);
    }
    let all = r.periods.iter().map(|p| &p.figures);
    if !all
        .chain(r.totals.iter().map(|t| &t.figures))
        .all(|f| f.reconciles)
    {
        anyhow::bail!("the report does not reconcile with the receivable");
    }
    Ok(())
}

/// The server and its background tasks, after [`Config::prepare_serve`]; returns when every
/// task has stopped.
async fn serve(mut cfg: Config, db: clickhouse::Client, stop: Shutdown) -> anyhow::Result<()> {
    cfg.prepare_serve()?;
    telemetry::serve_metrics(cfg.payments.metrics_addr.parse()?)?;
    metrics::declare();
    let listener = tokio::net::TcpListener::bind(&cfg.payments.listen_addr)
        .await
        .with_context(|| format!("binding payments.listen_addr {}", cfg.payments.listen_addr))?;
    tracing::info!(addr = %cfg.payments.listen_addr, portal = cfg.features.portal,
        dunning = cfg.features.dunning, spend_alerts = cfg.payments.spend_alerts,
        "tally-payments serving");
    let state = app_state(&cfg, &db, &stop).await?;
    let mut tasks = JoinSet::new();
    tasks.spawn(http::serve(listener, state.clone(), stop.clone()));
    tasks.spawn(ledger_sync(
        state,
        cfg.payments.ledger_sync_secs,
        retry_api(&cfg.payments).map(|api| (api, collect_policy(&cfg.dunning))),
        stop.clone(),
    ));
    if cfg.payments.spend_alerts {
        tasks.spawn(spend_alerts_task(&cfg, &db, &stop).await?);
    }
    if cfg.invoice_delivery.enabled {
        tasks.spawn(invoice_delivery_task(&cfg, &db, &stop).await?);
    }
    if cfg.features.dunning {
        let api = retry_api(&cfg.payments);
        tasks.spawn(dunning::run(db, cfg.dunning, api, stop.clone(), now_ms));
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// What the HTTP server shares: the API tokens (loaded now, refreshed in the background), the
/// Stripe webhook verifier, the portal's secret and its live spend client.
async fn app_state(
    cfg: &Config,
    db: &clickhouse::Client,
    stop: &Shutdown,
) -> anyhow::Result<Arc<AppState>> {
    let auth = Arc::new(Authenticator::new("payments", db.clone()));
    // without the tokens every API request is refused (fail closed) until a refresh loads them
    match auth.reload().await {
        Ok(n) => tracing::info!(tokens = n, "api tokens loaded"),
        Err(e) => tracing::warn!(error = %e, "loading api tokens failed; retrying"),
    }
    auth.refresh_every(
        Duration::from_secs(cfg.security.token_refresh_secs),
        stop.clone(),
    );
    // the portal's live spend: the client retries in the background, so a NATS server that
    // is down delays nothing here and the page says "live spend unavailable" meanwhile
    let portal_live = if cfg.features.portal && cfg.portal.live_spend_timeout_ms > 0 {
        cfg.nats.validate()?;
        Some(tally_payments::portal::live::LiveSpend {
            client: tally_platform::streams::connect(&cfg.nats).await?,
            subject_root: cfg.payments.spend_subject_root.clone(),
            timeout: Duration::from_millis(cfg.portal.live_spend_timeout_ms),
        })
    } else {
        None
    };
    Ok(Arc::new(AppState {
        settler: Settler::new(db.clone()),
        stripe: Stripe::new(
            cfg.payments.stripe_webhook_secret.expose(),
            cfg.payments.webhook_tolerance_secs,
        ),
        auth,
        portal_secret: cfg
            .features
            .portal
            .then(|| Secret::new(cfg.portal.signing_secret.expose())),
        portal: cfg.portal.clone(),
        portal_live,
        now_ms,
    }))
}

/// The spend alerts consumer (`payments.spend_alerts`), connected and ready to spawn.
async fn spend_alerts_task(
    cfg: &Config,
    db: &clickhouse::Client,
    stop: &Shutdown,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let source = spend_alerts::AlertsSource::new(&cfg.nats, &cfg.payments);
    let deliverer = spend_alerts::Deliverer::new(db.clone(), cfg.dunning.clone(), stop.clone())
        .map_err(anyhow::Error::msg)?;
    let nats = tally_platform::streams::connect(&cfg.nats).await?;
    Ok(spend_alerts::run(
        async_nats::jetstream::new(nats),
        source,
        deliverer,
        stop.clone(),
    ))
}

/// Invoice delivery (`invoice_delivery.enabled`), opened and ready to spawn.
async fn invoice_delivery_task(
    cfg: &Config,
    db: &clickhouse::Client,
    stop: &Shutdown,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let nats = tally_platform::streams::connect(&cfg.nats).await?;
    let instance = format!(
        "{}-{}",
        std::process::id(),
        secrets::generate_hex(4).unwrap_or_default()
    );
    let sender = delivery::Delivery::open(
        db.clone(),
        cfg.invoice_delivery.clone(),
        cfg.dunning.clone(),
        &cfg.nats,
        &async_nats::jetstream::new(nats),
        instance,
    )
    .await?;
    Ok(delivery::run(sender, stop.clone()))
}

/// The Stripe API for payment retries, when a secret key is configured.
fn retry_api(cfg: &PaymentsConfig) -> Option<dunning::retry::GatewayApi> {
    (!cfg.stripe_api_key.is_empty()).then(|| dunning::retry::GatewayApi {
        gateway: Box::new(Stripe::new(
            cfg.stripe_webhook_secret.expose(),
            cfg.webhook_tolerance_secs,
        )),
        base_url: cfg.stripe_api_base.clone(),
        api_key: cfg.stripe_api_key.clone(),
        timeout: Duration::from_secs(10),
    })
}

/// Collection retries a failed request with the notification backoff and attempt limit.
fn collect_policy(d: &DunningConfig) -> collect::Policy {
    collect::Policy {
        attempts_max: d.delivery_attempts_max,
        backoff_secs: d.delivery_backoff_secs,
    }
}

/// The ledger sync and, with a Stripe API key, the collection pass after it.
async fn ledger_sync(
    state: Arc<AppState>,
    every_secs: u64,
    collection: Option<(dunning::retry::GatewayApi, collect::Policy)>,
    stop: Shutdown,
) {
    let mut ticker = Ticker::new(Duration::from_secs(every_secs), stop);
    while ticker.next().await {
        match state.settler.sync_ledger(now_ms()).await {
            Ok(n) => tracing::debug!(journals = n, "ledger sync done"),
            Err(e) => tracing::warn!(error = %e, "ledger sync failed"),
        }
        // prepaid wallets: usage of open periods consumed, expiries, invoices' credit settled
        match tally_payments::wallet::pass::run(&state.settler.db, now_ms()).await {
            Ok(r) => tracing::debug!(
                movements = r.movements,
                journals = r.journals,
                failed = r.failed,
                "wallet pass done"
            ),
            Err(e) => tracing::warn!(error = %e, "wallet pass failed"),
        }
        match store::trial_balance(&state.settler.db).await {
            Ok(tb) => {
                let total: i128 = tb
                    .currencies
                    .keys()
                    .map(|c| tb.difference_minor(c).abs())
                    .sum();
                metrics::trial_balance_difference(total);
                if total != 0 {
                    tracing::error!(difference_minor = %total, "the ledger is not balanced");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the trial balance failed"),
        }
        if let Some((api, policy)) = &collection {
            match collect::pass(&state.settler.db, api, *policy, now_ms()).await {
                Ok(r) => tracing::debug!(sent = r.sent, failed = r.failed, "collection pass done"),
                Err(e) => tracing::warn!(error = %e, "collection pass failed"),
            }
        }
    }
}
