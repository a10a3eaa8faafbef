//! `[spend]`: the live spend deciders (`tally-spend`).

use serde::Deserialize;
use tally_platform::ConfigError;

/// `[spend]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendConfig {
    /// Subject root of the spend API on NATS: `<root>.authorize.<customer>.<agent>` (and
    /// `<root>.balance.<customer>`) are answered, `<root>.alerts.<customer>` carries threshold
    /// crossings. Default `tally`.
    #[serde(default = "default_subject_root")]
    pub subject_root: String,
    /// The partition this instance decides for (`nats.partitions` > 0); none: partition 0.
    /// Default none.
    #[serde(default)]
    pub partition: Option<u32>,
    /// Seconds without renewal after which a standby takes the partition over. Default 10.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// A hold without a deadline lasts this long (ms). Default 60000.
    #[serde(default = "default_hold_ms")]
    pub hold_default_ms: u64,
    /// The longest deadline a request may ask for (ms). Default 900000 (15 minutes).
    #[serde(default = "default_hold_max_ms")]
    pub hold_max_ms: u64,
    /// A hold expires this long after its deadline (ms), so usage reported just after the
    /// deadline still settles it. Default 30000.
    #[serde(default = "default_grace_ms")]
    pub hold_grace_ms: u64,
    /// Seconds between reloads of the catalog and the budgets. Default 5.
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Milliseconds between reads of `usage_aborts` (a batch counted from the feed and then
    /// aborted makes the decider rebuild). Default 1000.
    #[serde(default = "default_aborts_poll_ms")]
    pub aborts_poll_ms: u64,
    /// The HTTP API (budgets, balances; `rater::live::api`). Default `127.0.0.1:8091`.
    #[serde(default = "default_api_addr")]
    pub api_addr: String,
    /// Prometheus endpoint. Default `127.0.0.1:9106`.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
    /// Replicas of the spend streams and buckets (a NATS cluster: 3). Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The aggregators' durable consumer name (`aggregator.consumer`), whose lease key tells
    /// up to which batch storage holds a partition's usage. Default `aggregator`.
    #[serde(default = "default_aggregator_consumer")]
    pub aggregator_consumer: String,
    /// The most holds one customer may have at once; a request beyond is denied
    /// `too_many_holds`. Default 10000.
    #[serde(default = "default_max_holds")]
    pub max_holds_per_customer: u64,
}

const fn default_max_holds() -> u64 {
    10_000
}

fn default_aggregator_consumer() -> String {
    "aggregator".into()
}

fn default_subject_root() -> String {
    "tally".into()
}
const fn default_lease_secs() -> u64 {
    10
}
const fn default_hold_ms() -> u64 {
    60_000
}
const fn default_hold_max_ms() -> u64 {
    900_000
}
const fn default_grace_ms() -> u64 {
    30_000
}
const fn default_refresh_secs() -> u64 {
    5
}
const fn default_aborts_poll_ms() -> u64 {
    1000
}
fn default_metrics_addr() -> String {
    "127.0.0.1:9106".into()
}
fn default_api_addr() -> String {
    "127.0.0.1:8091".into()
}
const fn default_replicas() -> usize {
    1
}

impl Default for SpendConfig {
    fn default() -> Self {
        SpendConfig {
            subject_root: default_subject_root(),
            partition: None,
            lease_secs: default_lease_secs(),
            hold_default_ms: default_hold_ms(),
            hold_max_ms: default_hold_max_ms(),
            hold_grace_ms: default_grace_ms(),
            refresh_secs: default_refresh_secs(),
            aborts_poll_ms: default_aborts_poll_ms(),
            metrics_addr: default_metrics_addr(),
            api_addr: default_api_addr(),
            replicas: default_replicas(),
            aggregator_consumer: default_aggregator_consumer(),
            max_holds_per_customer: default_max_holds(),
        }
    }
}

impl SpendConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let token = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !token(&self.aggregator_consumer) {
            return Err(ConfigError::invalid(
                "spend.aggregator_consumer",
                "must match [A-Za-z0-9_-]+",
            ));
        }
        if !token(&self.subject_root) {
            return Err(ConfigError::invalid(
                "spend.subject_root",
                "must match [A-Za-z0-9_-]+",
            ));
        }
        for (name, v) in [
            ("spend.lease_secs", self.lease_secs),
            ("spend.hold_default_ms", self.hold_default_ms),
            ("spend.hold_max_ms", self.hold_max_ms),
            ("spend.refresh_secs", self.refresh_secs),
            ("spend.aborts_poll_ms", self.aborts_poll_ms),
            ("spend.max_holds_per_customer", self.max_holds_per_customer),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(name, "must be positive"));
            }
        }
        for (name, addr) in [
            ("spend.api_addr", &self.api_addr),
            ("spend.metrics_addr", &self.metrics_addr),
        ] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::invalid(name, format!("{addr:?}: {e}")))?;
        }
        if self.hold_default_ms > self.hold_max_ms {
            return Err(ConfigError::invalid(
                "spend.hold_default_ms",
                "must not exceed spend.hold_max_ms",
            ));
        }
        Ok(())
    }

    /// This instance's partition (0 without partitions).
    pub fn part(&self) -> u32 {
        self.partition.unwrap_or(0)
    }

    /// The aggregator's lease key of the partition (its consumer name): `<consumer>` without
    /// partitions, `<consumer>-p<N>` with.
    pub fn aggregator_consumer_name(&self) -> String {
        match self.partition {
            Some(p) => format!("{}-p{p}", self.aggregator_consumer),
            None => self.aggregator_consumer.clone(),
        }
    }

    /// The lease key of the partition: `spend-p<N>`.
    pub fn lease_key(&self) -> String {
        format!("spend-p{}", self.part())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        SpendConfig::default().validate().unwrap();
        let bad = SpendConfig {
            subject_root: "a.b".into(),
            ..SpendConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("spend.subject_root"));
        let bad = SpendConfig {
            hold_default_ms: 10,
            hold_max_ms: 5,
            ..SpendConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("hold_default_ms"));
    }
}
