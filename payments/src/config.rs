//! The `[payments]`, `[portal]` and `[dunning]` configuration sections, validated before any
//! I/O. Secrets (webhook secret, API token, signing secrets) come from the file or from
//! `TALLY_<SECTION>__<KEY>` variables; they are held as [`SecretString`], whose `Debug`
//! prints nothing, so a logged config never shows them.

use std::collections::BTreeMap;

use serde::Deserialize;
use tally_platform::ConfigError;

/// A secret string: deserialized like a string, never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> SecretString {
        SecretString(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// `[payments]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Address of the HTTP server (webhooks, API, portal). Default `127.0.0.1:8090`.
    #[serde(default = "default_listen_addr")]
    pub listen_addr: String,
    /// Prometheus endpoint. Default `127.0.0.1:9105`.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
    /// Bearer token of the payments API (manual payments, refunds, write-offs, portal links).
    /// Required. Env: `TALLY_PAYMENTS__API_TOKEN`.
    #[serde(default)]
    pub api_token: SecretString,
    /// The Stripe endpoint secret (`whsec_...`) that signs webhooks. Required.
    /// Env: `TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET`.
    #[serde(default)]
    pub stripe_webhook_secret: SecretString,
    /// A webhook whose signature timestamp is further than this from now is refused (Stripe's
    /// default tolerance). Default 300.
    #[serde(default = "default_tolerance_secs")]
    pub webhook_tolerance_secs: i64,
    /// Base URL of the Stripe API that payment retries are sent to. Default
    /// `https://api.stripe.com`.
    #[serde(default = "default_stripe_api_base")]
    pub stripe_api_base: String,
    /// Stripe secret key (`sk_...`) for payment retries; when empty, retries are notices to the
    /// customer only. Env: `TALLY_PAYMENTS__STRIPE_API_KEY`.
    #[serde(default)]
    pub stripe_api_key: SecretString,
    /// Seconds between ledger syncs (finalized invoices and credit notes posted). Default 30.
    #[serde(default = "default_ledger_sync_secs")]
    pub ledger_sync_secs: u64,
}

/// `[portal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// Signs portal links (HMAC-SHA256). Required when the portal is on.
    /// Env: `TALLY_PORTAL__SIGNING_SECRET`.
    #[serde(default)]
    pub signing_secret: SecretString,
    /// How long a portal link stays valid. Default 7 days.
    #[serde(default = "default_link_ttl_secs")]
    pub link_ttl_secs: i64,
    /// The public base URL links are built on. Default `http://127.0.0.1:8090`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
}

/// `[dunning]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DunningConfig {
    /// Seconds between dunning passes. Default 60.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: u64,
    /// Signs outgoing notifications (`Tally-Signature: t=...,v1=...`). Required when dunning
    /// is on. Env: `TALLY_DUNNING__SIGNING_SECRET`.
    #[serde(default)]
    pub signing_secret: SecretString,
    /// Payment retries: seconds after the first failed payment of an open invoice at which
    /// each retry is due. Default 1, 3 and 7 days.
    #[serde(default = "default_retry_schedule")]
    pub retry_schedule_secs: Vec<i64>,
    /// Overdue reminders: seconds after the due date at which each reminder is due.
    /// Default 1, 7 and 14 days.
    #[serde(default = "default_reminder_schedule")]
    pub reminder_schedule_secs: Vec<i64>,
    /// Delivery attempts per notification before giving up. Default 5.
    #[serde(default = "default_attempts_max")]
    pub delivery_attempts_max: u32,
    /// Wait before the second attempt; doubles after each failure. Default 60.
    #[serde(default = "default_backoff_secs")]
    pub delivery_backoff_secs: i64,
    /// Timeout of one delivery. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// The notification URL of each customer (`http://` only). Customers without one get
    /// no notifications (the pass logs them).
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
}

fn default_listen_addr() -> String {
    "127.0.0.1:8090".into()
}
fn default_metrics_addr() -> String {
    "127.0.0.1:9105".into()
}
fn default_stripe_api_base() -> String {
    "https://api.stripe.com".into()
}
const fn default_tolerance_secs() -> i64 {
    300
}
const fn default_ledger_sync_secs() -> u64 {
    30
}
const fn default_link_ttl_secs() -> i64 {
    7 * 86_400
}
fn default_base_url() -> String {
    "http://127.0.0.1:8090".into()
}
const fn default_interval_secs() -> u64 {
    60
}
fn default_retry_schedule() -> Vec<i64> {
    vec![86_400, 3 * 86_400, 7 * 86_400]
}
fn default_reminder_schedule() -> Vec<i64> {
    vec![86_400, 7 * 86_400, 14 * 86_400]
}
const fn default_attempts_max() -> u32 {
    5
}
const fn default_backoff_secs() -> i64 {
    60
}
const fn default_timeout_ms() -> u64 {
    5_000
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            listen_addr: default_listen_addr(),
            metrics_addr: default_metrics_addr(),
            api_token: SecretString::default(),
            stripe_webhook_secret: SecretString::default(),
            webhook_tolerance_secs: default_tolerance_secs(),
            stripe_api_base: default_stripe_api_base(),
            stripe_api_key: SecretString::default(),
            ledger_sync_secs: default_ledger_sync_secs(),
        }
    }
}

impl Default for PortalConfig {
    fn default() -> Self {
        PortalConfig {
            signing_secret: SecretString::default(),
            link_ttl_secs: default_link_ttl_secs(),
            base_url: default_base_url(),
        }
    }
}

impl Default for DunningConfig {
    fn default() -> Self {
        DunningConfig {
            interval_secs: default_interval_secs(),
            signing_secret: SecretString::default(),
            retry_schedule_secs: default_retry_schedule(),
            reminder_schedule_secs: default_reminder_schedule(),
            delivery_attempts_max: default_attempts_max(),
            delivery_backoff_secs: default_backoff_secs(),
            delivery_timeout_ms: default_timeout_ms(),
            endpoints: BTreeMap::new(),
        }
    }
}

fn required(setting: &str, s: &SecretString) -> Result<(), ConfigError> {
    if s.is_empty() {
        return Err(ConfigError::invalid(
            setting,
            "must be set (file or environment)",
        ));
    }
    Ok(())
}

fn ascending(setting: &str, schedule: &[i64]) -> Result<(), ConfigError> {
    if schedule.iter().any(|s| *s < 0) || schedule.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ConfigError::invalid(
            setting,
            "must be non-negative and strictly increasing",
        ));
    }
    Ok(())
}

impl PaymentsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        required("payments.api_token", &self.api_token)?;
        required(
            "payments.stripe_webhook_secret",
            &self.stripe_webhook_secret,
        )?;
        for (name, addr) in [
            ("payments.listen_addr", &self.listen_addr),
            ("payments.metrics_addr", &self.metrics_addr),
        ] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::invalid(name, e))?;
        }
        if !(self.stripe_api_base.starts_with("https://")
            || self.stripe_api_base.starts_with("http://"))
        {
            return Err(ConfigError::invalid(
                "payments.stripe_api_base",
                format!("{:?} is not an http(s):// URL", self.stripe_api_base),
            ));
        }
        if self.webhook_tolerance_secs <= 0 || self.ledger_sync_secs == 0 {
            return Err(ConfigError::invalid(
                "payments.webhook_tolerance_secs / ledger_sync_secs",
                "must be positive",
            ));
        }
        Ok(())
    }
}

impl PortalConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        required("portal.signing_secret", &self.signing_secret)?;
        if self.link_ttl_secs <= 0 {
            return Err(ConfigError::invalid(
                "portal.link_ttl_secs",
                "must be positive",
            ));
        }
        Ok(())
    }
}

impl DunningConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        required("dunning.signing_secret", &self.signing_secret)?;
        ascending("dunning.retry_schedule_secs", &self.retry_schedule_secs)?;
        ascending(
            "dunning.reminder_schedule_secs",
            &self.reminder_schedule_secs,
        )?;
        if self.interval_secs == 0 || self.delivery_attempts_max == 0 {
            return Err(ConfigError::invalid(
                "dunning.interval_secs / delivery_attempts_max",
                "must be positive",
            ));
        }
        for (customer, url) in &self.endpoints {
            if !url.starts_with("http://") {
                return Err(ConfigError::invalid(
                    format!("dunning.endpoints.{customer}"),
                    format!("{url:?} is not an http:// URL"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let cfg = PaymentsConfig {
            api_token: SecretString::new("tok_very_secret"),
            ..PaymentsConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("tok_very_secret") && shown.contains("<redacted>"));
    }

    #[test]
    fn missing_secrets_and_bad_schedules_are_named() {
        let e = PaymentsConfig::default()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("payments.api_token"), "{e}");
        let d = DunningConfig {
            signing_secret: SecretString::new("s"),
            retry_schedule_secs: vec![10, 5],
            ..DunningConfig::default()
        };
        let e = d.validate().unwrap_err().to_string();
        assert!(e.contains("dunning.retry_schedule_secs"), "{e}");
    }
}
