//! The `[payments]`, `[portal]` and `[dunning]` configuration sections, validated before any
//! I/O. Secrets (webhook secret, signing secrets, the Stripe API key) come from the file or
//! from `TALLY_<SECTION>__<KEY>` variables; they are held as [`SecretString`], whose `Debug`
//! prints nothing, so a logged config never shows them. Outside the `dev` profile
//! (`[security] profile`) each is judged by [`tally_platform::secrets`]: 32 random bytes at
//! least (the Stripe endpoint secret, whose format Stripe chooses, `whsec_` and 160 bits),
//! never a value published in this repository, and notifications go to `https://` only.
//! The payments API takes the bearer tokens every API takes (`tally_platform::auth`): it has
//! no token of its own.

use std::collections::BTreeMap;

use serde::Deserialize;
use tally_platform::secrets;
pub use tally_platform::secrets::SecretString;
use tally_platform::{ConfigError, Profile};

/// Bits the Stripe endpoint secret must carry outside `dev`: Stripe's `whsec_` secrets carry
/// about 190, and we do not choose their format.
pub const STRIPE_WEBHOOK_SECRET_BITS_MIN: u32 = 160;

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
    /// Replaced by the API tokens of every API (`tally-access tokens-create --role
    /// payments_operator`); refused when set, so a deployment that still sets it learns so.
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
    /// Spend alerts as webhooks: `serve` consumes the threshold crossings the spend deciders
    /// publish (stream `<nats.stream>_ALERTS`, subjects `<spend_subject_root>.alerts.>`) and
    /// sends each once as a signed notification to the customer's `dunning.endpoints` URL
    /// (`[dunning]`'s secret, CA file and delivery policy; [`crate::spend_alerts`]). Needs
    /// `[nats]`. Default false.
    #[serde(default)]
    pub spend_alerts: bool,
    /// The spend deciders' subject root (`spend.subject_root`): alerts are on
    /// `<root>.alerts.<customer>`. Default `tally`.
    #[serde(default = "default_spend_subject_root")]
    pub spend_subject_root: String,
    /// The durable JetStream consumer of the alerts. Default `payments-spend-alerts`.
    #[serde(default = "default_spend_alerts_consumer")]
    pub spend_alerts_consumer: String,
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
    /// How long the page waits for the spend decider's live balance (over `[nats]`, subject
    /// `<payments.spend_subject_root>.balance.<customer>`); 0: the page asks nothing and shows
    /// no live spend. Default 1000.
    #[serde(default = "default_live_spend_timeout_ms")]
    pub live_spend_timeout_ms: u64,
}

fn default_live_spend_timeout_ms() -> u64 {
    1000
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
    /// The notification URL of each customer: `https://` (the certificate verified against
    /// the system's roots and `ca_file`); `http://` only in the `dev` profile. Each customer's
    /// notifications are signed with its own secret, derived from `signing_secret`
    /// (`tally-payments endpoint-secret --customer ID` prints it). Customers without a URL
    /// get no notifications (the pass logs them).
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// A PEM file of further root certificates that notification endpoints may chain to (a
    /// private CA). Default empty: the system's roots only.
    #[serde(default)]
    pub ca_file: String,
}

/// How the SMTP connection is secured (`invoice_delivery.smtp_tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with `STARTTLS`, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte ("implicit TLS", port 465).
    Tls,
    /// No TLS at all: the `dev` profile only (a local sink).
    None,
}

/// `[invoice_delivery]`: every finalized invoice emailed (PDF attached) to the customer's
/// catalog `billing_email` over SMTP and sent as a signed `invoice.finalized` webhook to its
/// `dunning.endpoints` URL, each exactly once ([`crate::delivery`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceDeliveryConfig {
    /// Whether `serve` runs the delivery passes. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Seconds between passes. Default 30.
    #[serde(default = "default_delivery_interval_secs")]
    pub interval_secs: u64,
    /// Invoices finalized longer ago than this are never sent (turning delivery on does not
    /// mail the whole history; a longer outage than this loses their delivery). Default 7 days.
    #[serde(default = "default_delivery_lookback_secs")]
    pub lookback_secs: i64,
    /// Attempts per email or webhook before giving up. Default 8.
    #[serde(default = "default_delivery_attempts_max")]
    pub attempts_max: u32,
    /// Wait before the second attempt; doubles after each failure. Default 60.
    #[serde(default = "default_backoff_secs")]
    pub backoff_secs: i64,
    /// Timeout of one attempt (the whole SMTP session, or one webhook). Default 30000.
    #[serde(default = "default_delivery_timeout_ms")]
    pub timeout_ms: u64,
    /// Send the signed `invoice.finalized` webhook to the customer's `dunning.endpoints` URL
    /// (`[dunning]`'s secret, CA file). Default true.
    #[serde(default = "default_true")]
    pub webhook: bool,
    /// NATS KV bucket of the attempt claims (one attempt per claim, across instances).
    /// Default empty: `<nats.stream>_INVOICE_DELIVERY`.
    #[serde(default)]
    pub claims_bucket: String,
    /// SMTP server (submission) host; empty: no invoice email. Default empty.
    #[serde(default)]
    pub smtp_host: String,
    /// SMTP port. Default 587.
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// `starttls` (default), `tls` or `none` (`dev` only).
    #[serde(default)]
    pub smtp_tls: SmtpTls,
    /// A PEM file of further root certificates the SMTP server may chain to. Default empty.
    #[serde(default)]
    pub smtp_ca_file: String,
    /// SMTP user (AUTH PLAIN / LOGIN); empty: no authentication. Default empty.
    #[serde(default)]
    pub smtp_username: String,
    /// Password of `smtp_username`. Outside `dev` it must come from
    /// `TALLY_INVOICE_DELIVERY__SMTP_PASSWORD`, never the file.
    #[serde(default)]
    pub smtp_password: SecretString,
    /// The sender, `Name <address>` or `address`. Required with `smtp_host`.
    #[serde(default)]
    pub from: String,
    /// A `Reply-To` address; empty: none. Default empty.
    #[serde(default)]
    pub reply_to: String,
}

/// The variable the SMTP password comes from outside `dev`.
pub const SMTP_PASSWORD_ENV: &str = "TALLY_INVOICE_DELIVERY__SMTP_PASSWORD";

const fn default_delivery_interval_secs() -> u64 {
    30
}
const fn default_delivery_lookback_secs() -> i64 {
    7 * 86_400
}
const fn default_delivery_attempts_max() -> u32 {
    8
}
const fn default_delivery_timeout_ms() -> u64 {
    30_000
}
const fn default_true() -> bool {
    true
}
const fn default_smtp_port() -> u16 {
    587
}

impl Default for InvoiceDeliveryConfig {
    fn default() -> Self {
        InvoiceDeliveryConfig {
            enabled: false,
            interval_secs: default_delivery_interval_secs(),
            lookback_secs: default_delivery_lookback_secs(),
            attempts_max: default_delivery_attempts_max(),
            backoff_secs: default_backoff_secs(),
            timeout_ms: default_delivery_timeout_ms(),
            webhook: true,
            claims_bucket: String::new(),
            smtp_host: String::new(),
            smtp_port: default_smtp_port(),
            smtp_tls: SmtpTls::default(),
            smtp_ca_file: String::new(),
            smtp_username: String::new(),
            smtp_password: SecretString::default(),
            from: String::new(),
            reply_to: String::new(),
        }
    }
}

impl InvoiceDeliveryConfig {
    /// Whether invoices are emailed (an SMTP host is set).
    pub fn email(&self) -> bool {
        !self.smtp_host.is_empty()
    }

    /// The claims bucket: `claims_bucket`, else `<nats.stream>_INVOICE_DELIVERY`.
    pub fn claims_bucket(&self, nats: &tally_platform::NatsConfig) -> String {
        if self.claims_bucket.is_empty() {
            format!("{}_INVOICE_DELIVERY", nats.stream)
        } else {
            self.claims_bucket.clone()
        }
    }

    /// Checks every setting for `profile`, the SMTP password's origin included (`password_from_env`:
    /// whether [`SMTP_PASSWORD_ENV`] is set); the error names the setting, never the password.
    pub fn validate(&self, profile: Profile, password_from_env: bool) -> Result<(), ConfigError> {
        self.validate_delivery()?;
        if !self.email() {
            return Ok(());
        }
        self.validate_smtp(profile)?;
        self.validate_credentials(profile, password_from_env)?;
        if !self.smtp_ca_file.is_empty() {
            crate::delivery::email::ca_certificates(&self.smtp_ca_file)
                .map_err(|e| ConfigError::invalid("invoice_delivery.smtp_ca_file", e))?;
        }
        Ok(())
    }

    /// The pass's timings and bounds, the claims bucket's name, and something to deliver.
    fn validate_delivery(&self) -> Result<(), ConfigError> {
        if self.interval_secs == 0
            || self.attempts_max == 0
            || self.timeout_ms == 0
            || self.backoff_secs <= 0
            || self.lookback_secs <= 0
        {
            return Err(ConfigError::invalid(
                "invoice_delivery.interval_secs / attempts_max / backoff_secs / timeout_ms / lookback_secs",
                "must be positive",
            ));
        }
        if !self.claims_bucket.is_empty()
            && !self
                .claims_bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::invalid(
                "invoice_delivery.claims_bucket",
                format!("{:?} must match [A-Za-z0-9_-]+", self.claims_bucket),
            ));
        }
        if self.enabled && !self.email() && !self.webhook {
            return Err(ConfigError::invalid(
                "invoice_delivery.smtp_host",
                "is empty and webhook = false: there is nothing to deliver",
            ));
        }
        Ok(())
    }

    /// The SMTP server (host, port, TLS outside dev) and the sender's addresses.
    fn validate_smtp(&self, profile: Profile) -> Result<(), ConfigError> {
        let host_ok = self.smtp_host.len() <= 253
            && self
                .smtp_host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':');
        if !host_ok {
            return Err(ConfigError::invalid(
                "invoice_delivery.smtp_host",
                format!("{:?} is not a host name or address", self.smtp_host),
            ));
        }
        if self.smtp_port == 0 {
            return Err(ConfigError::invalid(
                "invoice_delivery.smtp_port",
                "must be positive",
            ));
        }
        if self.smtp_tls == SmtpTls::None && profile != Profile::Dev {
            return Err(ConfigError::invalid(
                "invoice_delivery.smtp_tls",
                "none is for the dev profile only: use starttls or tls",
            ));
        }
        crate::delivery::email::mailbox(&self.from)
            .map_err(|e| ConfigError::invalid("invoice_delivery.from", e))?;
        if !self.reply_to.is_empty() {
            crate::delivery::email::mailbox(&self.reply_to)
                .map_err(|e| ConfigError::invalid("invoice_delivery.reply_to", e))?;
        }
        Ok(())
    }

    /// The SMTP login: both or neither, the password from the environment outside dev.
    fn validate_credentials(
        &self,
        profile: Profile,
        password_from_env: bool,
    ) -> Result<(), ConfigError> {
        match (self.smtp_username.is_empty(), self.smtp_password.is_empty()) {
            (true, true) => Ok(()),
            (false, false) => {
                if profile != Profile::Dev && !password_from_env {
                    return Err(ConfigError::invalid(
                        "invoice_delivery.smtp_password",
                        format!("must come from {SMTP_PASSWORD_ENV} outside the dev profile, not the file"),
                    ));
                }
                Ok(())
            }
            (false, true) => Err(ConfigError::invalid(
                "invoice_delivery.smtp_password",
                format!("is required with smtp_username ({SMTP_PASSWORD_ENV})"),
            )),
            (true, false) => Err(ConfigError::invalid(
                "invoice_delivery.smtp_username",
                "is required with smtp_password",
            )),
        }
    }
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
fn default_spend_subject_root() -> String {
    "tally".into()
}
fn default_spend_alerts_consumer() -> String {
    "payments-spend-alerts".into()
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
            spend_alerts: false,
            spend_subject_root: default_spend_subject_root(),
            spend_alerts_consumer: default_spend_alerts_consumer(),
        }
    }
}

impl Default for PortalConfig {
    fn default() -> Self {
        PortalConfig {
            signing_secret: SecretString::default(),
            link_ttl_secs: default_link_ttl_secs(),
            base_url: default_base_url(),
            live_spend_timeout_ms: default_live_spend_timeout_ms(),
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
            ca_file: String::new(),
        }
    }
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
    /// Checks every setting for `profile`; the error names the first bad one, never a secret.
    pub fn validate(&self, profile: Profile) -> Result<(), ConfigError> {
        if !self.api_token.is_empty() {
            return Err(ConfigError::invalid(
                "payments.api_token",
                "is no longer used: the payments API takes API tokens (tally-access \
                 tokens-create --role payments_operator); unset it",
            ));
        }
        let webhook = &self.stripe_webhook_secret;
        secrets::check_bits(
            "payments.stripe_webhook_secret",
            webhook,
            profile,
            STRIPE_WEBHOOK_SECRET_BITS_MIN,
        )?;
        if profile != Profile::Dev && !webhook.expose().starts_with("whsec_") {
            return Err(ConfigError::invalid(
                "payments.stripe_webhook_secret",
                "is not a Stripe endpoint secret (whsec_...)",
            ));
        }
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
        for (name, v) in [
            ("payments.spend_subject_root", &self.spend_subject_root),
            (
                "payments.spend_alerts_consumer",
                &self.spend_alerts_consumer,
            ),
        ] {
            let token = !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !token {
                return Err(ConfigError::invalid(
                    name,
                    format!("{v:?} must match [A-Za-z0-9_-]{{1,64}}"),
                ));
            }
        }
        Ok(())
    }
}

impl PortalConfig {
    /// Checks every setting for `profile`.
    pub fn validate(&self, profile: Profile) -> Result<(), ConfigError> {
        secrets::check("portal.signing_secret", &self.signing_secret, profile)?;
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
    /// Checks every setting for `profile`.
    pub fn validate(&self, profile: Profile) -> Result<(), ConfigError> {
        secrets::check("dunning.signing_secret", &self.signing_secret, profile)?;
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
            endpoint_url(url, profile)
                .map_err(|e| ConfigError::invalid(format!("dunning.endpoints.{customer}"), e))?;
        }
        if !self.ca_file.is_empty() {
            crate::outbound::Trust::with_pem_file(std::path::Path::new(&self.ca_file))
                .map_err(|e| ConfigError::invalid("dunning.ca_file", e))?;
        }
        Ok(())
    }
}

/// Whether `url` may receive notifications in `profile`: an `https://` URL with a host, or
/// `http://` in `dev`.
fn endpoint_url(url: &str, profile: Profile) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    match (uri.scheme_str(), profile) {
        (Some("https"), _) | (Some("http"), Profile::Dev) => {}
        (Some("http"), _) => {
            return Err(format!(
                "{url:?}: notifications go over https:// only (http:// in the dev profile)"
            ))
        }
        _ => return Err(format!("{url:?} is not an https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const WHSEC: &str = "whsec_Xq3rVbT9LmZ2pK8wNcY4hJ6dF0sA1gRe";

    fn payments(webhook: &str) -> PaymentsConfig {
        PaymentsConfig {
            stripe_webhook_secret: SecretString::new(webhook),
            ..PaymentsConfig::default()
        }
    }

    fn dunning(secret: &str, url: &str) -> DunningConfig {
        DunningConfig {
            signing_secret: SecretString::new(secret),
            endpoints: BTreeMap::from([("acme".to_owned(), url.to_owned())]),
            ..DunningConfig::default()
        }
    }

    #[test]
    fn secrets_never_print() {
        let shown = format!("{:?}", payments("whsec_very_secret"));
        assert!(!shown.contains("whsec_very_secret") && shown.contains("<redacted>"));
    }

    #[test]
    fn missing_secrets_and_bad_schedules_are_named() {
        let e = PaymentsConfig::default()
            .validate(Profile::Dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("payments.stripe_webhook_secret"), "{e}");
        let d = DunningConfig {
            retry_schedule_secs: vec![10, 5],
            ..dunning(STRONG, "https://billing.example/hooks")
        };
        let e = d.validate(Profile::Production).unwrap_err().to_string();
        assert!(e.contains("dunning.retry_schedule_secs"), "{e}");
    }

    /// Issue 16, finding 7: `tally-payments` started in the production profile with
    /// one-character secrets, and with the demo values docker-compose shipped.
    #[test]
    fn weak_and_published_secrets_are_refused_outside_dev() {
        for profile in [Profile::Staging, Profile::Production] {
            for weak in [
                "s",
                "whsec_demo_change_me",
                "whsec_short",
                &format!("whsec_{}", "a".repeat(40)),
            ] {
                let e = payments(weak).validate(profile).unwrap_err().to_string();
                assert!(e.contains("payments.stripe_webhook_secret"), "{weak}: {e}");
            }
            let e = payments(STRONG).validate(profile).unwrap_err().to_string();
            assert!(e.contains("whsec_"), "{e}");
            payments(WHSEC)
                .validate(profile)
                .expect("a Stripe-shaped secret");
            for weak in ["s", "demo-portal-signing-secret-change-me", "portal-secret"] {
                let portal = PortalConfig {
                    signing_secret: SecretString::new(weak),
                    ..PortalConfig::default()
                };
                let e = portal.validate(profile).unwrap_err().to_string();
                assert!(e.contains("portal.signing_secret"), "{weak}: {e}");
            }
            for weak in ["s", "demo-dunning-signing-secret-change-me"] {
                let e = dunning(weak, "https://billing.example/hooks")
                    .validate(profile)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("dunning.signing_secret"), "{weak}: {e}");
            }
            dunning(STRONG, "https://billing.example/hooks")
                .validate(profile)
                .expect("a strong secret");
        }
        // dev keeps working with the demo values
        payments("whsec_demo_change_me")
            .validate(Profile::Dev)
            .expect("dev");
        dunning("s", "http://127.0.0.1:9999/hooks")
            .validate(Profile::Dev)
            .expect("dev");
        // the old token of this API is refused, whatever the profile
        let old = PaymentsConfig {
            api_token: SecretString::new(STRONG),
            ..payments(WHSEC)
        };
        let e = old.validate(Profile::Dev).unwrap_err().to_string();
        assert!(
            e.contains("payments.api_token") && e.contains("tokens-create"),
            "{e}"
        );
    }

    #[test]
    fn spend_alert_names_are_single_tokens() {
        let ok = payments(WHSEC);
        assert_eq!(ok.spend_subject_root, "tally");
        assert_eq!(ok.spend_alerts_consumer, "payments-spend-alerts");
        assert!(!ok.spend_alerts);
        ok.validate(Profile::Production).expect("defaults");
        for bad in ["", "a.b", "a>", "a b", "*"] {
            let root = PaymentsConfig {
                spend_subject_root: bad.into(),
                ..payments(WHSEC)
            };
            let e = root.validate(Profile::Dev).unwrap_err().to_string();
            assert!(e.contains("payments.spend_subject_root"), "{bad}: {e}");
            let consumer = PaymentsConfig {
                spend_alerts_consumer: bad.into(),
                ..payments(WHSEC)
            };
            let e = consumer.validate(Profile::Dev).unwrap_err().to_string();
            assert!(e.contains("payments.spend_alerts_consumer"), "{bad}: {e}");
        }
    }

    /// Issue 17, item 9: the SMTP settings of invoice delivery are judged at start.
    #[test]
    fn invoice_delivery_smtp_settings_are_validated() {
        let smtp = |f: &dyn Fn(&mut InvoiceDeliveryConfig)| {
            let mut c = InvoiceDeliveryConfig {
                enabled: true,
                smtp_host: "smtp.example.com".into(),
                from: "Acme Billing <billing@acme.example>".into(),
                ..InvoiceDeliveryConfig::default()
            };
            f(&mut c);
            c
        };
        let named = |c: InvoiceDeliveryConfig, profile, from_env, setting: &str| {
            let e = c.validate(profile, from_env).unwrap_err().to_string();
            assert!(e.contains(setting), "{setting}: {e}");
            assert!(!e.contains("hunter2-but-longer"), "{e}");
        };
        smtp(&|_| {})
            .validate(Profile::Production, false)
            .expect("starttls, no auth");
        assert_eq!(smtp(&|_| {}).smtp_port, 587);
        assert_eq!(smtp(&|_| {}).smtp_tls, SmtpTls::Starttls);
        let with_auth = |c: &mut InvoiceDeliveryConfig| {
            c.smtp_username = "billing".into();
            c.smtp_password = SecretString::new("hunter2-but-longer");
        };
        smtp(&with_auth)
            .validate(Profile::Production, true)
            .expect("password from the env");
        smtp(&with_auth)
            .validate(Profile::Dev, false)
            .expect("dev: the file will do");
        named(
            smtp(&with_auth),
            Profile::Production,
            false,
            "invoice_delivery.smtp_password",
        );
        named(
            smtp(&|c| c.smtp_username = "billing".into()),
            Profile::Dev,
            false,
            "invoice_delivery.smtp_password",
        );
        named(
            smtp(&|c| c.smtp_tls = SmtpTls::None),
            Profile::Staging,
            true,
            "invoice_delivery.smtp_tls",
        );
        smtp(&|c| c.smtp_tls = SmtpTls::None)
            .validate(Profile::Dev, false)
            .expect("dev sink");
        for bad in [
            "",
            "billing",
            "billing@localhost",
            "a@b.example\r\nBcc: c@d.example",
        ] {
            named(
                smtp(&|c| c.from = bad.into()),
                Profile::Dev,
                false,
                "invoice_delivery.from",
            );
        }
        named(
            smtp(&|c| c.smtp_port = 0),
            Profile::Dev,
            false,
            "invoice_delivery.smtp_port",
        );
        named(
            smtp(&|c| c.smtp_host = "smtp.example.com/x".into()),
            Profile::Dev,
            false,
            "invoice_delivery.smtp_host",
        );
        named(
            smtp(&|c| c.smtp_ca_file = "/nonexistent/ca.pem".into()),
            Profile::Dev,
            false,
            "invoice_delivery.smtp_ca_file",
        );
        named(
            smtp(&|c| {
                c.smtp_host.clear();
                c.webhook = false;
            }),
            Profile::Dev,
            false,
            "nothing to deliver",
        );
        named(
            smtp(&|c| c.attempts_max = 0),
            Profile::Dev,
            false,
            "attempts_max",
        );
        let nats = tally_platform::NatsConfig::default();
        assert_eq!(smtp(&|_| {}).claims_bucket(&nats), "USAGE_INVOICE_DELIVERY");
        named(
            smtp(&|c| c.claims_bucket = "a.b".into()),
            Profile::Dev,
            false,
            "invoice_delivery.claims_bucket",
        );
        // without SMTP, only the webhook
        let off = InvoiceDeliveryConfig::default();
        assert!(!off.email() && off.webhook && !off.enabled);
        off.validate(Profile::Production, false).expect("defaults");
    }

    /// Issue 16, finding 11: notification URLs had to be `http://`.
    #[test]
    fn notification_endpoints_are_https_outside_dev() {
        for url in [
            "http://billing.example/hooks",
            "ftp://billing.example/",
            "https:///x",
            "billing.example",
        ] {
            let e = dunning(STRONG, url)
                .validate(Profile::Production)
                .unwrap_err()
                .to_string();
            assert!(e.contains("dunning.endpoints.acme"), "{url}: {e}");
        }
        dunning(STRONG, "https://billing.example:8443/hooks?x=1")
            .validate(Profile::Production)
            .expect("https");
        let missing_ca = DunningConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..dunning(STRONG, "https://billing.example/hooks")
        };
        let e = missing_ca
            .validate(Profile::Production)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dunning.ca_file"), "{e}");
    }
}
