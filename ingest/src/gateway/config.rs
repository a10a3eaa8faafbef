//! `[ingest]`: the HTTP gateway's settings and limits, validated before any I/O.
//!
//! Every field has a default (the `const fn default_*` below, repeated in docs/INGEST.md);
//! every limit is a bound the gateway enforces, never a hint.

use std::net::SocketAddr;

use serde::Deserialize;
use tally_platform::ConfigError;

/// `[ingest]` in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Where the gateway listens for HTTP. Default `127.0.0.1:8088`.
    #[serde(default = "default_listen_addr")]
    pub listen_addr: String,
    /// Where Prometheus metrics are served. Default `127.0.0.1:9104`.
    #[serde(default = "default_metrics_addr")]
    pub metrics_addr: String,
    /// Where the admin API (`/v1/admin/keys`) listens: its own listener, never the public one,
    /// and it takes API tokens of role `key_admin` (`tally-access tokens-create`). Bind it to
    /// loopback or an internal address. Default empty: no admin API (manage keys with
    /// `tally-gateway keys-*`).
    #[serde(default)]
    pub admin_addr: String,
    /// Replaced by `admin_addr` and API tokens; refused when set, so a deployment that still
    /// sets it learns so.
    #[serde(default)]
    pub admin_token: String,
    /// Largest request body, compressed or not, and largest body after gzip decoding, in
    /// bytes (413 above). Default 1 MiB.
    #[serde(default = "default_body_max_bytes")]
    pub body_max_bytes: usize,
    /// Largest single event in bytes (rejected `too_large`). Default 64 KiB.
    #[serde(default = "default_event_max_bytes")]
    pub event_max_bytes: usize,
    /// Most events in one batch (413 above). Default 1000.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Deepest nesting of arrays and objects in an event, the envelope being depth 1
    /// (rejected `malformed`, field `data`). Default 8.
    #[serde(default = "default_depth_max")]
    pub depth_max: usize,
    /// Longest JSON string (key or value) in an event, in bytes as sent (rejected
    /// `malformed`). Default 1024.
    #[serde(default = "default_string_max_bytes")]
    pub string_max_bytes: usize,
    /// Sustained events per second per API key. Default 5000.
    #[serde(default = "default_rate_per_key_per_sec")]
    pub rate_per_key_per_sec: u32,
    /// Events a key may send in a burst above the sustained rate; at least
    /// `batch_max_events`. Default 10000.
    #[serde(default = "default_burst_per_key")]
    pub burst_per_key: u32,
    /// Time a client has to send a request's headers, in milliseconds (also the idle
    /// keep-alive limit between requests). Default 10000.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body, in milliseconds (408 after). Default 30000.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Most open connections; further ones wait in the listen backlog. Default 1024.
    #[serde(default = "default_connections_max")]
    pub connections_max: usize,
    /// Most open connections from one remote address; more from it are closed at once, so
    /// one client cannot hold every connection. At most `connections_max`. Default 256
    /// (agents behind one NAT share an address; a proxy in front must limit per client).
    #[serde(default = "default_connections_per_peer_max")]
    pub connections_per_peer_max: usize,
    /// Seconds between reloads of the API keys from ClickHouse. Default 10.
    #[serde(default = "default_key_refresh_secs")]
    pub key_refresh_secs: u64,
    /// A file holding a hex key (at least 32 bytes): when set, customer and agent ids are
    /// replaced by keyed hashes before publishing (see `tally_ingest::pseudonym`). Default
    /// empty: ids are stored as sent.
    #[serde(default)]
    pub pseudonym_key_file: String,
    /// Subject root of the spend deciders (`spend.subject_root`) that `POST /v1/authorize`
    /// and `GET /v1/balance` ask. Default `tally`.
    #[serde(default = "default_spend_subject_root")]
    pub spend_subject_root: String,
    /// How long `POST /v1/authorize` waits for a decider (503 after). Default 2000.
    #[serde(default = "default_spend_timeout_ms")]
    pub spend_timeout_ms: u64,
}

fn default_spend_subject_root() -> String {
    "tally".into()
}
const fn default_spend_timeout_ms() -> u64 {
    2000
}

fn default_listen_addr() -> String {
    "127.0.0.1:8088".into()
}
fn default_metrics_addr() -> String {
    "127.0.0.1:9104".into()
}
const fn default_body_max_bytes() -> usize {
    1 << 20
}
const fn default_event_max_bytes() -> usize {
    64 << 10
}
const fn default_batch_max_events() -> usize {
    1000
}
const fn default_depth_max() -> usize {
    tally_domain::shape::DEPTH_MAX
}
const fn default_string_max_bytes() -> usize {
    tally_domain::shape::STRING_MAX_BYTES
}
const fn default_rate_per_key_per_sec() -> u32 {
    5000
}
const fn default_burst_per_key() -> u32 {
    10_000
}
const fn default_header_timeout_ms() -> u64 {
    10_000
}
const fn default_body_timeout_ms() -> u64 {
    30_000
}
const fn default_connections_max() -> usize {
    1024
}
const fn default_connections_per_peer_max() -> usize {
    256
}
const fn default_key_refresh_secs() -> u64 {
    10
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen_addr: default_listen_addr(),
            metrics_addr: default_metrics_addr(),
            admin_addr: String::new(),
            admin_token: String::new(),
            body_max_bytes: default_body_max_bytes(),
            event_max_bytes: default_event_max_bytes(),
            batch_max_events: default_batch_max_events(),
            depth_max: default_depth_max(),
            string_max_bytes: default_string_max_bytes(),
            rate_per_key_per_sec: default_rate_per_key_per_sec(),
            burst_per_key: default_burst_per_key(),
            spend_subject_root: default_spend_subject_root(),
            spend_timeout_ms: default_spend_timeout_ms(),
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            connections_max: default_connections_max(),
            connections_per_peer_max: default_connections_per_peer_max(),
            key_refresh_secs: default_key_refresh_secs(),
            pseudonym_key_file: String::new(),
        }
    }
}

impl IngestConfig {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, addr) in [
            ("ingest.listen_addr", &self.listen_addr),
            ("ingest.metrics_addr", &self.metrics_addr),
        ] {
            addr.parse::<SocketAddr>()
                .map_err(|e| ConfigError::invalid(name, format!("{addr:?}: {e}")))?;
        }
        if !self.admin_token.is_empty() {
            return Err(ConfigError::invalid(
                "ingest.admin_token",
                "is no longer used: the admin API listens on ingest.admin_addr and takes API \
                 tokens of role key_admin (tally-access tokens-create); unset it",
            ));
        }
        if let Some(admin) = self.admin()? {
            if self.listen_addr.parse::<SocketAddr>().ok() == Some(admin) && admin.port() != 0 {
                return Err(ConfigError::invalid(
                    "ingest.admin_addr",
                    "must differ from ingest.listen_addr: the admin API has its own listener",
                ));
            }
        }
        if self.spend_subject_root.is_empty()
            || !self
                .spend_subject_root
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::invalid(
                "ingest.spend_subject_root",
                "must match [A-Za-z0-9_-]+",
            ));
        }
        let positive = [
            ("ingest.body_max_bytes", self.body_max_bytes as u64),
            ("ingest.event_max_bytes", self.event_max_bytes as u64),
            ("ingest.batch_max_events", self.batch_max_events as u64),
            ("ingest.depth_max", self.depth_max as u64),
            ("ingest.string_max_bytes", self.string_max_bytes as u64),
            (
                "ingest.rate_per_key_per_sec",
                u64::from(self.rate_per_key_per_sec),
            ),
            ("ingest.header_timeout_ms", self.header_timeout_ms),
            ("ingest.body_timeout_ms", self.body_timeout_ms),
            ("ingest.spend_timeout_ms", self.spend_timeout_ms),
            ("ingest.connections_max", self.connections_max as u64),
            (
                "ingest.connections_per_peer_max",
                self.connections_per_peer_max as u64,
            ),
            ("ingest.key_refresh_secs", self.key_refresh_secs),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::invalid(*name, "must be positive"));
        }
        if self.connections_per_peer_max > self.connections_max {
            return Err(ConfigError::invalid(
                "ingest.connections_per_peer_max",
                "must not exceed ingest.connections_max",
            ));
        }
        if self.event_max_bytes > self.body_max_bytes {
            return Err(ConfigError::invalid(
                "ingest.event_max_bytes",
                "must not exceed ingest.body_max_bytes",
            ));
        }
        if (self.burst_per_key as usize) < self.batch_max_events {
            return Err(ConfigError::invalid(
                "ingest.burst_per_key",
                format!(
                    "{} is below ingest.batch_max_events ({}): a full batch could never pass",
                    self.burst_per_key, self.batch_max_events
                ),
            ));
        }
        Ok(())
    }

    /// The listen address (call [`IngestConfig::validate`] first).
    pub fn listen(&self) -> Result<SocketAddr, ConfigError> {
        self.listen_addr
            .parse()
            .map_err(|e| ConfigError::invalid("ingest.listen_addr", e))
    }

    /// The admin API's address; `None` when it is off.
    pub fn admin(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.admin_addr.is_empty() {
            return Ok(None);
        }
        self.admin_addr.parse().map(Some).map_err(|e| {
            ConfigError::invalid("ingest.admin_addr", format!("{:?}: {e}", self.admin_addr))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        IngestConfig::default().validate().unwrap();
    }

    #[test]
    fn the_shipped_configuration_file_has_a_valid_ingest_section() {
        #[derive(Deserialize)]
        struct File {
            ingest: IngestConfig,
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tally.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let file: File =
            tally_platform::config::from_str_with_env(&text, std::path::Path::new(path), vec![])
                .unwrap();
        file.ingest.validate().unwrap();
        assert_eq!(file.ingest.body_max_bytes, default_body_max_bytes());
    }

    /// A change to the defaults, and the setting its error must name.
    type Case = (fn(&mut IngestConfig), &'static str);

    #[test]
    fn each_bad_setting_is_named() {
        let cases: Vec<Case> = vec![
            (|c| c.listen_addr = "nowhere".into(), "ingest.listen_addr"),
            (|c| c.admin_token = "short".into(), "ingest.admin_token"),
            (
                |c| c.admin_token = "a-long-static-admin-token-0123456789".into(),
                "ingest.admin_token",
            ),
            (|c| c.admin_addr = "nowhere".into(), "ingest.admin_addr"),
            (
                |c| c.admin_addr = c.listen_addr.clone(),
                "ingest.admin_addr",
            ),
            (|c| c.body_max_bytes = 0, "ingest.body_max_bytes"),
            (|c| c.event_max_bytes = 2 << 20, "ingest.event_max_bytes"),
            (|c| c.burst_per_key = 10, "ingest.burst_per_key"),
            (
                |c| c.rate_per_key_per_sec = 0,
                "ingest.rate_per_key_per_sec",
            ),
            (
                |c| c.connections_per_peer_max = 0,
                "ingest.connections_per_peer_max",
            ),
            (
                |c| c.connections_per_peer_max = c.connections_max + 1,
                "ingest.connections_per_peer_max",
            ),
        ];
        for (edit, name) in cases {
            let mut c = IngestConfig::default();
            edit(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }
}
