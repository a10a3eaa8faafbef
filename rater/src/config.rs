//! The rater's configuration: `[rater]`, `[[plans]]` and `[[subscriptions]]`.
//!
//! Decimals (prices, tier bounds) are written as strings or integers, never floats.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_domain::exact;
use tally_platform::ConfigError;

use crate::pricing::Tier;

/// `[rater]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaterConfig {
    /// Plan for customers without a subscription; none: such usage is left unpriced (and
    /// counted in `tally_rater_unpriced_usage_total`). Default none.
    #[serde(default)]
    pub default_plan: Option<String>,
    /// Seconds between rating passes when running continuously. Default 30.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    /// Periods overlapping `[now - lookback_secs, now]` are rated on every pass; it must cover
    /// the aggregator's allowed lateness. Default 172800 (2 days).
    #[serde(default = "default_lookback_secs")]
    pub lookback_secs: u64,
    /// Prometheus endpoint. Default `127.0.0.1:9102`.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
}

const fn default_interval_secs() -> u64 {
    30
}
const fn default_lookback_secs() -> u64 {
    2 * 86_400
}
fn default_metrics_addr() -> String {
    "127.0.0.1:9102".into()
}

impl Default for RaterConfig {
    fn default() -> Self {
        RaterConfig {
            default_plan: None,
            interval_secs: default_interval_secs(),
            lookback_secs: default_lookback_secs(),
            metrics_addr: default_metrics_addr(),
        }
    }
}

impl RaterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_secs == 0 {
            return Err(ConfigError::invalid(
                "rater.interval_secs",
                "must be positive",
            ));
        }
        if self.lookback_secs == 0 {
            return Err(ConfigError::invalid(
                "rater.lookback_secs",
                "must be positive",
            ));
        }
        self.metrics_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ConfigError::invalid("rater.metrics_addr", e))?;
        Ok(())
    }
}

/// `[[plans]]`: one immutable plan version.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub id: String,
    pub version: u32,
    /// ISO 4217 code.
    pub currency: String,
    /// RFC 3339; the version applies to periods starting at or after this instant.
    pub effective_from: DateTime<Utc>,
    pub prices: Vec<PriceSpec>,
}

/// `[[plans.prices]]`: the price of one meter.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum PriceSpec {
    PerUnit {
        meter: String,
        #[serde(deserialize_with = "exact::decimal")]
        unit_price: Decimal,
    },
    Graduated {
        meter: String,
        tiers: Vec<Tier>,
    },
}

/// `[[subscriptions]]`: a customer on a plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    pub customer: String,
    pub plan: String,
    /// Day of the month billing periods start (1 to 31; 31 means the last day). Default 1.
    #[serde(default = "default_anchor")]
    pub billing_anchor_day: u32,
}

const fn default_anchor() -> u32 {
    1
}
