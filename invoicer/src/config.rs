//! The `[invoicer]` configuration section.

use serde::Deserialize;
use tally_platform::ConfigError;

use crate::invoice::Issuer;

/// `[invoicer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoicerConfig {
    /// Seconds between invoicing passes when running continuously. Default 60.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
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
    /// Prometheus endpoint. Default `127.0.0.1:9103`.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
}

const fn default_interval_secs() -> u64 {
    60
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
            interval_secs: default_interval_secs(),
            grace_secs: default_grace_secs(),
            lookback_secs: default_lookback_secs(),
            payment_terms_days: default_payment_terms_days(),
            issuer: default_issuer(),
            metrics_addr: default_metrics_addr(),
        }
    }
}

impl InvoicerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_secs == 0 {
            return Err(ConfigError::invalid(
                "invoicer.interval_secs",
                "must be positive",
            ));
        }
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
