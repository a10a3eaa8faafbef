//! The `tally-payments` process's configuration file and what `serve` settles on it before
//! any I/O, in the one order that works: secrets left unset are made up in `dev` first (so the
//! checks after see them), then the sections are checked for the features that will run
//! ([`Config::check_for_serve`], pure over the file and the profile).
//!
//! It owns that order and nothing else: each section's rules are [`crate::config`]'s and
//! the platform's. It never connects, binds a socket or spawns a task (the binary wires
//! those).

use serde::Deserialize;
use tally_platform::config::SecurityConfig;
use tally_platform::secrets::{self, SecretString};
use tally_platform::{
    ClickHouseConfig, ConfigError, Features, NatsConfig, Profile, TelemetryConfig,
};

use crate::config::{
    DunningConfig, InvoiceDeliveryConfig, PaymentsConfig, PortalConfig, SMTP_PASSWORD_ENV,
};

/// The sections of the configuration file `tally-payments` reads.
#[derive(Deserialize)]
pub struct Config {
    #[serde(default)]
    pub clickhouse: ClickHouseConfig,
    /// Read with `payments.spend_alerts` only (the alerts stream is `<nats.stream>_ALERTS`).
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub features: Features,
    #[serde(default)]
    pub payments: PaymentsConfig,
    #[serde(default)]
    pub portal: PortalConfig,
    #[serde(default)]
    pub dunning: DunningConfig,
    #[serde(default)]
    pub invoice_delivery: InvoiceDeliveryConfig,
    #[serde(default)]
    pub security: SecurityConfig,
}

/// Why `serve` cannot start with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the OS random number generator failed")]
    Random,
}

impl Config {
    /// What `serve` does to the file before anything starts: in `dev`, the webhook, portal
    /// and dunning secrets left unset are made up; then [`Config::check_for_serve`], with the
    /// SMTP password's origin read from the environment.
    pub fn prepare_serve(&mut self) -> Result<(), BootstrapError> {
        let profile = self.security.profile;
        dev_secret(
            profile,
            "payments.stripe_webhook_secret",
            &mut self.payments.stripe_webhook_secret,
        )?;
        dev_secret(
            profile,
            "portal.signing_secret",
            &mut self.portal.signing_secret,
        )?;
        dev_secret(
            profile,
            "dunning.signing_secret",
            &mut self.dunning.signing_secret,
        )?;
        let smtp_password_from_env = std::env::var_os(SMTP_PASSWORD_ENV).is_some();
        Ok(self.check_for_serve(smtp_password_from_env)?)
    }

    /// Checks the sections the enabled features read, the first error naming its setting:
    /// payments always; the portal with its feature; dunning with its feature, with spend
    /// alerts (their webhooks go to dunning's endpoints) and with invoice webhooks; NATS with
    /// spend alerts and with invoice delivery.
    pub fn check_for_serve(&self, smtp_password_from_env: bool) -> Result<(), ConfigError> {
        let profile = self.security.profile;
        self.payments.validate(profile)?;
        if self.features.portal {
            self.portal.validate(profile)?;
        }
        if self.features.dunning || self.payments.spend_alerts {
            // spend alerts go to dunning's endpoints, signed and retried as its notices are
            self.dunning.validate(profile)?;
        }
        if self.payments.spend_alerts {
            self.nats.validate()?;
        }
        if self.invoice_delivery.enabled {
            // the SMTP password must come from the environment outside dev
            self.invoice_delivery
                .validate(profile, smtp_password_from_env)?;
            self.nats.validate()?;
            if self.invoice_delivery.webhook {
                // the invoice.finalized webhooks go to dunning's endpoints, signed as its notices
                self.dunning.validate(profile)?;
            }
        }
        Ok(())
    }
}

/// In `dev`, a secret left unset is made up at random for this process (logged, never shown):
/// the demo runs without published values. Elsewhere nothing is made up.
fn dev_secret(profile: Profile, setting: &str, s: &mut SecretString) -> Result<(), BootstrapError> {
    if profile == Profile::Dev && s.is_empty() {
        let made = secrets::generate_hex(32).map_err(|_| BootstrapError::Random)?;
        *s = SecretString::new(made);
        tracing::warn!(
            setting,
            "dev profile: no secret set, a random one is used for this process"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_checks_only_the_sections_of_what_runs_after_dev_secrets_are_made_up() {
        let mut cfg: Config = serde_json::from_value(serde_json::json!({
            "security": {"profile": "dev"},
            "features": {"portal": false, "dunning": false},
            "portal": {"link_ttl_secs": 0},
            "invoice_delivery": {"enabled": false, "attempts_max": 0},
        }))
        .expect("the test configuration parses");
        // the portal and delivery are off: their bad settings are not read
        cfg.prepare_serve().expect("dev starts without secrets");
        assert!(!cfg.payments.stripe_webhook_secret.is_empty());
        assert!(!cfg.portal.signing_secret.is_empty());
        assert!(!cfg.dunning.signing_secret.is_empty());
        cfg.features.portal = true;
        let e = cfg
            .check_for_serve(false)
            .expect_err("portal on")
            .to_string();
        assert!(e.contains("portal.link_ttl_secs"), "{e}");
        cfg.features.portal = false;
        cfg.invoice_delivery.enabled = true;
        let e = cfg
            .check_for_serve(false)
            .expect_err("delivery on")
            .to_string();
        assert!(e.contains("invoice_delivery.interval_secs"), "{e}");
    }

    #[test]
    fn outside_dev_nothing_is_made_up_and_the_empty_secret_is_refused() {
        let mut cfg: Config =
            serde_json::from_value(serde_json::json!({"security": {"profile": "staging"}}))
                .expect("the test configuration parses");
        let e = cfg.prepare_serve().expect_err("no secret").to_string();
        assert!(e.contains("payments.stripe_webhook_secret"), "{e}");
        assert!(cfg.portal.signing_secret.is_empty());
    }
}
