//! The `[invoicer]` configuration section.

use serde::Deserialize;
use tally_platform::ConfigError;

use crate::invoice::Issuer;
use crate::schedule::Schedule;

/// `[invoicer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoicerConfig {
    /// When passes run (`serve`): a cron expression in UTC, five fields (`minute hour
    /// day-of-month month day-of-week`) or six with leading seconds. Default `*/5 * * * *`
    /// (every five minutes). `tally-invoicer once` and `POST /v1/runs` run a pass at any time.
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// How long after a period ends its invoice stays a draft (late usage still lands), in
    /// seconds. Default 86400.
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
    /// Periods that ended within this many seconds are (re)invoiced on each pass; it must
    /// exceed `grace_secs`. Default 3 days.
    #[serde(default = "default_lookback_secs")]
    pub lookback_secs: u64,
    /// Days from the period end to the due date. Default 30.
    #[serde(default = "default_payment_terms_days")]
    pub payment_terms_days: u32,
    /// `[invoicer.issuer]`: who issues the invoices (`id`, `name`, `address` lines, `tax_id`);
    /// invoice numbers are sequential per issuer `id`. Default id `tally`, name `Tally`.
    #[serde(default = "default_issuer")]
    pub issuer: Issuer,
    /// Printed invoice numbers are `<number_prefix><n>`, `n` at least 6 digits. Default `INV-`.
    #[serde(default = "default_number_prefix")]
    pub number_prefix: String,
    /// NATS KV bucket holding the number counters and the frozen finalized invoices; it
    /// belongs to one ClickHouse database (the invoicer refuses a bucket another database
    /// numbers with). Default empty: the namespace's, `<NAMESPACE>_INVOICE_NUMBERS`
    /// (`INVOICE_NUMBERS` without `nats.namespace`).
    #[serde(default)]
    pub numbers_bucket: String,
    /// Latest-usage window of late-usage adjustments: finalized periods that ended within
    /// this many seconds are compared with their latest charges on every pass. Default 90 days.
    #[serde(default = "default_adjustment_lookback_secs")]
    pub adjustment_lookback_secs: u64,
    /// The invoicer's API (invoices, renderings, lineage, lifecycle, credit notes, manual
    /// runs). Default `127.0.0.1:8083`.
    #[serde(default = "default_api_addr")]
    pub api_addr: String,
    /// Prometheus endpoint. Default `127.0.0.1:9103`.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
    /// The `[features]` section (not a key of `[invoicer]`): the binary copies it in. With
    /// `late_usage_adjustments = false` late usage of finalized periods is left alone (no
    /// adjustment lines, no credit notes); reconciliation still reports it.
    #[serde(skip)]
    pub features: tally_platform::Features,
}

fn default_schedule() -> Schedule {
    Schedule::parse("*/5 * * * *").unwrap_or_else(|e| unreachable!("default schedule: {e}"))
}
fn default_number_prefix() -> String {
    "INV-".into()
}
const fn default_adjustment_lookback_secs() -> u64 {
    90 * 86_400
}
fn default_api_addr() -> String {
    "127.0.0.1:8083".into()
}
const fn default_grace_secs() -> u64 {
    86_400
}
const fn default_lookback_secs() -> u64 {
    3 * 86_400
}
const fn default_payment_terms_days() -> u32 {
    30
}
fn default_issuer() -> Issuer {
    Issuer {
        id: "tally".into(),
        name: "Tally".into(),
        address: Vec::new(),
        tax_id: String::new(),
    }
}
fn default_metrics_addr() -> String {
    "127.0.0.1:9103".into()
}

impl Default for InvoicerConfig {
    fn default() -> Self {
        InvoicerConfig {
            schedule: default_schedule(),
            grace_secs: default_grace_secs(),
            lookback_secs: default_lookback_secs(),
            payment_terms_days: default_payment_terms_days(),
            issuer: default_issuer(),
            number_prefix: default_number_prefix(),
            numbers_bucket: String::new(),
            adjustment_lookback_secs: default_adjustment_lookback_secs(),
            api_addr: default_api_addr(),
            metrics_addr: default_metrics_addr(),
            features: tally_platform::Features::default(),
        }
    }
}

impl InvoicerConfig {
    /// The invoice-number bucket: `numbers_bucket`, else the one `nats.namespace` names.
    pub fn numbers_bucket(&self, nats: &tally_platform::NatsConfig) -> String {
        if self.numbers_bucket.is_empty() {
            nats.invoice_numbers_bucket()
        } else {
            self.numbers_bucket.clone()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self
            .issuer
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || self.issuer.id.is_empty()
            || self.issuer.id.len() > 64
        {
            return Err(ConfigError::invalid(
                "invoicer.issuer.id",
                "use 1 to 64 of [A-Za-z0-9_-]",
            ));
        }
        if !self
            .numbers_bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::invalid(
                "invoicer.numbers_bucket",
                "use [A-Za-z0-9_-]",
            ));
        }
        self.api_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::invalid("invoicer.api_addr", e))?;
        if self.lookback_secs <= self.grace_secs {
            return Err(ConfigError::invalid(
                "invoicer.lookback_secs",
                "must be greater than invoicer.grace_secs",
            ));
        }
        self.metrics_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::invalid("invoicer.metrics_addr", e))?;
        Ok(())
    }
}
