//! Configuration: one TOML file (default `config/tally.toml`, or `TALLY_CONFIG`), then
//! environment overrides, then validation, all before any I/O.
//!
//! An override is `TALLY_<SECTION>__<KEY>=value`, for example
//! `TALLY_CLICKHOUSE__DATABASE=tally_test` or `TALLY_AGGREGATOR__BATCH_MAX_EVENTS=1000`; the
//! value is read as a TOML scalar (number, boolean) and otherwise as a string. Every error
//! names the setting it is about.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The top-level sections a configuration file may have; anything else is a typo.
pub const SECTIONS: &[&str] = &[
    "nats",
    "clickhouse",
    "telemetry",
    "aggregator",
    "rater",
    "invoicer",
    "ingest",
    "meters",
    "customers",
    "plans",
    "subscriptions",
    "tax_rates",
    "fx_rates",
    "features",
    "payments",
    "portal",
    "dunning",
    "invoice_delivery",
    "security",
    "spend",
];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {detail}")]
    Syntax { path: PathBuf, detail: String },
    #[error("unknown configuration section `{0}`; known sections are {list}", list = SECTIONS.join(", "))]
    UnknownSection(String),
    #[error("environment variable {var}: {detail}")]
    Env { var: String, detail: String },
    #[error("setting `{setting}`: {detail}")]
    Invalid { setting: String, detail: String },
}

impl ConfigError {
    pub fn invalid(setting: impl Into<String>, detail: impl ToString) -> Self {
        ConfigError::Invalid {
            setting: setting.into(),
            detail: detail.to_string(),
        }
    }
}

/// `[nats]`: where the broker is and which streams hold usage.
///
/// Every NATS resource of a deployment is named from `namespace` (see
/// [`NatsConfig::names`]): the streams, their subjects, the aggregators' lease bucket
/// (`<stream>_AGGREGATORS`) and the invoice-number bucket; the name settings of a file that
/// sets a namespace default to the derived names (an explicit one still wins, for the
/// upgrade of a deployment whose streams have other names: docs/OPERATIONS.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The deployment's namespace (`[a-z0-9_-]{1,32}`): with `staging`, the streams are
    /// `STAGING_USAGE` and `STAGING_USAGE_DLQ` on `staging_usage.>` and `staging_usage_dlq.>`,
    /// the invoice numbers in `STAGING_INVOICE_NUMBERS`. Default empty: the names of before
    /// namespaces (`USAGE`, `usage`, `USAGE_DLQ`, `usage_dlq`, `INVOICE_NUMBERS`).
    #[serde(default)]
    pub namespace: String,
    /// Server URL, or several comma-separated (the nodes of a cluster: the client fails over
    /// between them). Default `nats://127.0.0.1:4222`.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// Usage stream name. Default `USAGE`.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// First subject token: events go to `<subject_prefix>.<customer>.<agent>`. Default `usage`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// Dead-letter stream name. Default `USAGE_DLQ`.
    #[serde(default = "default_dlq_stream")]
    pub dlq_stream: String,
    /// Dead-letter subjects are `<dlq_subject_prefix>.<reason>`. Default `usage_dlq`.
    #[serde(default = "default_dlq_prefix")]
    pub dlq_subject_prefix: String,
    /// JetStream's duplicate window for `Nats-Msg-Id` on the usage stream, in seconds.
    /// Default 120.
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
    /// The dead-letter stream's own duplicate window, in seconds: a record is keyed by the
    /// refused message's stream sequence, so a redelivery within this long (a crash, a
    /// takeover) adds no second record. Default 600.
    #[serde(default = "default_dlq_duplicate_window_secs")]
    pub dlq_duplicate_window_secs: u64,
    /// Maximum age of messages kept in the usage and dead-letter streams, in seconds.
    /// Default 7 days.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u64,
    /// Largest size of the usage stream, in bytes (-1: no limit). When it is full the
    /// stream refuses new events (discard new: publishers get an error, the gateway a 503)
    /// rather than drop any; JetStream reserves this much of the server's storage
    /// (`max_file_store`) when the stream is created. Default 8589934592 (8 GiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: i64,
    /// Most messages the usage stream keeps (-1: no limit; full like `max_bytes`). Default -1.
    #[serde(default = "default_max_msgs")]
    pub max_msgs: i64,
    /// Largest size of the dead-letter stream, in bytes (-1: no limit). When it is full its
    /// oldest records go (discard old), so refusals never stop the aggregator; every refused
    /// message stays in the usage stream at its `stream_seq`. Default 1073741824 (1 GiB).
    #[serde(default = "default_dlq_max_bytes")]
    pub dlq_max_bytes: i64,
    /// PEM file of the certificate authorities to trust for the server's certificate (a
    /// private CA); empty: the system's roots. Default empty.
    #[serde(default)]
    pub tls_ca_file: String,
    /// PEM file of this client's certificate, for servers that verify clients (mutual TLS;
    /// with `verify_and_map` the certificate is the NATS user). Set with `tls_key_file`.
    /// Default empty.
    #[serde(default)]
    pub tls_cert_file: String,
    /// PEM file of the key of `tls_cert_file`. Default empty.
    #[serde(default)]
    pub tls_key_file: String,
    /// Refuse to talk to a server without TLS, whatever the URL says (`tls://` URLs require
    /// it anyway). Default false.
    #[serde(default)]
    pub tls_required: bool,
    /// NATS user (one per service, see docs/SECURITY.md). Default empty: no authentication.
    #[serde(default)]
    pub user: String,
    /// Password of `user`. Default empty. Prefer `TALLY_NATS__PASSWORD` over the file.
    #[serde(default)]
    pub password: String,
    /// Partitions of the subject space for scale-out (0: one partition, no mapping). With N
    /// partitions the NATS server maps `<subject_prefix>.*.*` to
    /// `<subject_prefix>_p.<partition by customer>.<customer>.<agent>` (see
    /// [`NatsConfig::partition_mapping`]) and each aggregator consumes one partition. Default 0.
    #[serde(default)]
    pub partitions: u32,
    /// Copies of the usage and dead-letter streams, and of the KV buckets Tally creates
    /// (invoice numbers; the aggregator's lease has `aggregator.lease_replicas`), when they are
    /// created: 1 on one server, 3 on a NATS cluster (an existing stream keeps its own). Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

const fn default_replicas() -> usize {
    1
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_stream() -> String {
    "USAGE".into()
}
fn default_subject_prefix() -> String {
    "usage".into()
}
fn default_dlq_stream() -> String {
    "USAGE_DLQ".into()
}
fn default_dlq_prefix() -> String {
    "usage_dlq".into()
}
const fn default_duplicate_window_secs() -> u64 {
    120
}
const fn default_max_age_secs() -> u64 {
    7 * 24 * 3600
}
const fn default_dlq_duplicate_window_secs() -> u64 {
    600
}
const fn default_max_bytes() -> i64 {
    8 << 30
}
const fn default_max_msgs() -> i64 {
    -1
}
const fn default_dlq_max_bytes() -> i64 {
    1 << 30
}

/// The names of a namespace's NATS resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsNames {
    pub stream: String,
    pub subject_prefix: String,
    pub dlq_stream: String,
    pub dlq_subject_prefix: String,
    /// The invoicer's KV bucket of invoice numbers.
    pub invoice_numbers_bucket: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            namespace: String::new(),
            url: default_nats_url(),
            stream: default_stream(),
            subject_prefix: default_subject_prefix(),
            dlq_stream: default_dlq_stream(),
            dlq_subject_prefix: default_dlq_prefix(),
            duplicate_window_secs: default_duplicate_window_secs(),
            dlq_duplicate_window_secs: default_dlq_duplicate_window_secs(),
            max_age_secs: default_max_age_secs(),
            max_bytes: default_max_bytes(),
            max_msgs: default_max_msgs(),
            dlq_max_bytes: default_dlq_max_bytes(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_required: false,
            user: String::new(),
            password: String::new(),
            partitions: 0,
            replicas: default_replicas(),
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl NatsConfig {
    /// The names of `namespace`'s resources (see the struct's docs).
    pub fn names(namespace: &str) -> NatsNames {
        if namespace.is_empty() {
            return NatsNames {
                stream: default_stream(),
                subject_prefix: default_subject_prefix(),
                dlq_stream: default_dlq_stream(),
                dlq_subject_prefix: default_dlq_prefix(),
                invoice_numbers_bucket: crate::streams::DEFAULT_INVOICE_NUMBER_BUCKET.into(),
            };
        }
        let upper = namespace.to_ascii_uppercase();
        NatsNames {
            stream: format!("{upper}_USAGE"),
            subject_prefix: format!("{namespace}_usage"),
            dlq_stream: format!("{upper}_USAGE_DLQ"),
            dlq_subject_prefix: format!("{namespace}_usage_dlq"),
            invoice_numbers_bucket: format!("{upper}_INVOICE_NUMBERS"),
        }
    }

    /// This configuration with `namespace` and every name derived from it.
    pub fn with_namespace(self, namespace: &str) -> NatsConfig {
        let n = NatsConfig::names(namespace);
        NatsConfig {
            namespace: namespace.to_owned(),
            stream: n.stream,
            subject_prefix: n.subject_prefix,
            dlq_stream: n.dlq_stream,
            dlq_subject_prefix: n.dlq_subject_prefix,
            ..self
        }
    }

    /// The invoice-number bucket of this namespace (`[invoicer] numbers_bucket` overrides it).
    pub fn invoice_numbers_bucket(&self) -> String {
        NatsConfig::names(&self.namespace).invoice_numbers_bucket
    }

    /// The aggregators' lease bucket: `<stream>_AGGREGATORS`.
    pub fn lease_bucket(&self) -> String {
        format!("{}_AGGREGATORS", self.stream)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let ns_ok = self.namespace.len() <= 32
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ns_ok {
            return Err(ConfigError::invalid(
                "nats.namespace",
                format!("{:?} must match [a-z0-9_-]{{0,32}}", self.namespace),
            ));
        }
        for (name, v) in [
            ("nats.stream", &self.stream),
            ("nats.subject_prefix", &self.subject_prefix),
            ("nats.dlq_stream", &self.dlq_stream),
            ("nats.dlq_subject_prefix", &self.dlq_subject_prefix),
        ] {
            if !is_token(v) {
                return Err(ConfigError::invalid(
                    name,
                    format!("{v:?} must match [A-Za-z0-9_-]+"),
                ));
            }
        }
        if self.subject_prefix == self.dlq_subject_prefix {
            return Err(ConfigError::invalid(
                "nats.dlq_subject_prefix",
                "must differ from nats.subject_prefix",
            ));
        }
        for (name, v) in [
            ("nats.duplicate_window_secs", self.duplicate_window_secs),
            (
                "nats.dlq_duplicate_window_secs",
                self.dlq_duplicate_window_secs,
            ),
            ("nats.max_age_secs", self.max_age_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(name, "must be positive"));
            }
        }
        if self.duplicate_window_secs > self.max_age_secs {
            return Err(ConfigError::invalid(
                "nats.duplicate_window_secs",
                "must not exceed nats.max_age_secs (JetStream refuses it)",
            ));
        }
        for (name, v, min) in [
            ("nats.max_bytes", self.max_bytes, 1 << 20),
            ("nats.dlq_max_bytes", self.dlq_max_bytes, 1 << 20),
            ("nats.max_msgs", self.max_msgs, 1),
        ] {
            if v != -1 && v < min {
                return Err(ConfigError::invalid(
                    name,
                    format!("is {v}: -1 (no limit) or at least {min}"),
                ));
            }
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(ConfigError::invalid(
                "nats.tls_key_file",
                "nats.tls_cert_file and nats.tls_key_file go together",
            ));
        }
        if self.partitions > 1024 {
            return Err(ConfigError::invalid("nats.partitions", "at most 1024"));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::invalid("nats.replicas", "must be 1 to 5"));
        }
        Ok(())
    }

    /// The subjects the usage stream captures: `<subject_prefix>.>`, or with partitions the
    /// mapped `<subject_prefix>_p.>`.
    pub fn stream_subjects(&self) -> String {
        if self.partitions == 0 {
            format!("{}.>", self.subject_prefix)
        } else {
            format!("{}_p.>", self.subject_prefix)
        }
    }

    /// The subject root of one partition's events, `<root>.<customer>.<agent>`:
    /// `<subject_prefix>` without partitions, else `<subject_prefix>_p.<partition>`.
    pub fn partition_root(&self, partition: Option<u32>) -> String {
        match (self.partitions, partition) {
            (0, _) | (_, None) => self.subject_prefix.clone(),
            (_, Some(p)) => format!("{}_p.{p}", self.subject_prefix),
        }
    }

    /// The partition the NATS server maps `customer`'s events to (its `partition(n,1)`
    /// transform: FNV-1a 32 of the customer token, modulo the partitions); `None` without
    /// partitions. Checked against a real server by the aggregator's partitions test.
    pub fn partition_of(&self, customer: &str) -> Option<u32> {
        (self.partitions > 0).then(|| {
            let mut h: u32 = 0x811c_9dc5;
            for b in customer.as_bytes() {
                h ^= u32::from(*b);
                h = h.wrapping_mul(0x0100_0193);
            }
            h % self.partitions
        })
    }

    /// The `mappings` entry the NATS server needs for partitions, in nats-server config
    /// syntax (partitioned by the customer token, so a customer's events, and so its dedup
    /// and windows, always stay in one partition). `None` without partitions.
    pub fn partition_mapping(&self) -> Option<String> {
        (self.partitions > 0).then(|| {
            format!(
                "mappings = {{ \"{p}.*.*\": \"{p}_p.{{{{partition({n},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}\" }}",
                p = self.subject_prefix,
                n = self.partitions
            )
        })
    }
}

/// `[clickhouse]`: the HTTP endpoint and database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP or HTTPS URL. Default `http://127.0.0.1:8123`. `https://` (ClickHouse's
    /// `https_port`, often 8443) runs over TLS and verifies the server's certificate against
    /// `tls_ca_file` or the system's roots; plain `http://` to another machine is logged as a
    /// warning at start (docs/SECURITY.md, "TLS").
    #[serde(default = "default_ch_url")]
    pub url: String,
    /// With `https://`: PEM file of the certificate authorities to trust for the server's
    /// certificate (a private CA); empty: the system's roots. Default empty.
    #[serde(default)]
    pub tls_ca_file: String,
    /// With `https://`: PEM file of this client's certificate, for a server that verifies
    /// clients (mutual TLS). Set with `tls_key_file`. Default empty.
    #[serde(default)]
    pub tls_cert_file: String,
    /// PEM file of the private key of `tls_cert_file`. Default empty.
    #[serde(default)]
    pub tls_key_file: String,
    /// Database holding Tally's tables. Default `tally`.
    #[serde(default = "default_ch_database")]
    pub database: String,
    /// User. Default `default`.
    #[serde(default = "default_ch_user")]
    pub user: String,
    /// Password. Default empty. Prefer `TALLY_CLICKHOUSE__PASSWORD` over the file.
    #[serde(default)]
    pub password: String,
    /// The `<remote_servers>` cluster whose replicas hold Tally's tables (one shard; see
    /// docs/RELIABILITY.md, "On a cluster"). Set, `tally-migrate` creates every table as a
    /// `Replicated*MergeTree` `ON CLUSTER` ([`crate::migrate`]), and every statement runs with
    /// `insert_quorum` and `select_sequential_consistency = 1`. Default none: one server.
    #[serde(default)]
    pub cluster: Option<String>,
    /// With `cluster`: how many replicas must have a write before it succeeds (ClickHouse's
    /// `insert_quorum`); at least 2, and the number of replicas to let any replica serve any
    /// read at once. Default 2.
    #[serde(default = "default_insert_quorum")]
    pub insert_quorum: u32,
    /// With `cluster`: how long a write waits for its quorum before it fails (ClickHouse's
    /// `insert_quorum_timeout`), in seconds. Default 30.
    #[serde(default = "default_insert_quorum_timeout_secs")]
    pub insert_quorum_timeout_secs: u64,
}

const fn default_insert_quorum() -> u32 {
    2
}
const fn default_insert_quorum_timeout_secs() -> u64 {
    30
}

fn default_ch_url() -> String {
    "http://127.0.0.1:8123".into()
}
fn default_ch_database() -> String {
    "tally".into()
}
fn default_ch_user() -> String {
    "default".into()
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: default_ch_url(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            database: default_ch_database(),
            user: default_ch_user(),
            password: String::new(),
            cluster: None,
            insert_quorum: default_insert_quorum(),
            insert_quorum_timeout_secs: default_insert_quorum_timeout_secs(),
        }
    }
}

impl ClickHouseConfig {
    /// Checks the settings; with `https://`, also reads the TLS files (a missing or unusable
    /// one is refused here, naming its setting, so a service does not start without them).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err(ConfigError::invalid(
                "clickhouse.tls_key_file",
                "clickhouse.tls_cert_file and clickhouse.tls_key_file go together",
            ));
        }
        if self.url.starts_with("https://") {
            crate::store::tls_client_config(self)?;
        } else if self.url.starts_with("http://") {
            let set = [
                ("clickhouse.tls_ca_file", &self.tls_ca_file),
                ("clickhouse.tls_cert_file", &self.tls_cert_file),
            ];
            if let Some((setting, _)) = set.iter().find(|(_, v)| !v.is_empty()) {
                // a CA or a certificate for a plain connection: the operator expects TLS
                return Err(ConfigError::invalid(
                    *setting,
                    format!(
                        "is set but clickhouse.url {:?} is plain http://; use https:// (ClickHouse's https_port)",
                        self.url
                    ),
                ));
            }
        } else {
            return Err(ConfigError::invalid(
                "clickhouse.url",
                format!("{:?} must start with http:// or https://", self.url),
            ));
        }
        let ok = !self.database.is_empty()
            && self
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !self.database.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            return Err(ConfigError::invalid(
                "clickhouse.database",
                format!("{:?} must match [A-Za-z_][A-Za-z0-9_]*", self.database),
            ));
        }
        if let Some(cluster) = &self.cluster {
            if !is_token(cluster) {
                return Err(ConfigError::invalid(
                    "clickhouse.cluster",
                    format!("{cluster:?} must match [A-Za-z0-9_-]+"),
                ));
            }
            if self.insert_quorum < 2 {
                return Err(ConfigError::invalid(
                    "clickhouse.insert_quorum",
                    "must be at least 2 on a cluster: a write on one replica only can be lost with it, or missed by a read on another (docs/RELIABILITY.md)",
                ));
            }
            if !(1..=3600).contains(&self.insert_quorum_timeout_secs) {
                return Err(ConfigError::invalid(
                    "clickhouse.insert_quorum_timeout_secs",
                    "must be 1 to 3600",
                ));
            }
        }
        Ok(())
    }
}

/// `[telemetry]`: logs and metrics.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log filter in `tracing` syntax. Default `info` (or `RUST_LOG`).
    #[serde(default)]
    pub log: Option<String>,
}

/// Which deployment a process runs in. Only `dev` relaxes the secret checks
/// ([`crate::secrets`]): there any non-empty secret, published demo values included, is
/// accepted and payments makes up the ones left unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Dev,
    Staging,
    /// The default: a file that does not say otherwise is held to production's rules.
    #[default]
    Production,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Staging => "staging",
            Profile::Production => "production",
        }
    }
}

/// `[security]`: the profile the secret checks apply, and how API tokens are kept fresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// `dev`, `staging` or `production`. Default `production`: weak secrets and the values
    /// published in this repository are refused everywhere but in `dev`.
    #[serde(default)]
    pub profile: Profile,
    /// Seconds between reloads of the API tokens (`api_tokens`) by each API: a revoked token
    /// stops working within this. Default 10.
    #[serde(default = "default_token_refresh_secs")]
    pub token_refresh_secs: u64,
}

const fn default_token_refresh_secs() -> u64 {
    10
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            profile: Profile::default(),
            token_refresh_secs: default_token_refresh_secs(),
        }
    }
}

impl SecurityConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token_refresh_secs == 0 || self.token_refresh_secs > 3600 {
            return Err(ConfigError::invalid(
                "security.token_refresh_secs",
                "must be 1 to 3600",
            ));
        }
        Ok(())
    }
}

/// The configuration file path: `TALLY_CONFIG`, else `config/tally.toml`.
pub fn default_path() -> PathBuf {
    std::env::var_os("TALLY_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config/tally.toml"))
}

/// Reads `path`, applies `TALLY_*__*` overrides from the process environment and deserializes.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_str_with_env(&text, path, std::env::vars())
}

/// Like [`load`], from text and an explicit environment (for tests).
pub fn from_str_with_env<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if let Some(unknown) = table.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
        return Err(ConfigError::UnknownSection(unknown.clone()));
    }
    for (var, value) in env {
        apply_override(&mut table, &var, &value)?;
    }
    name_from_namespace(&mut table);
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let setting = e.path().to_string();
        ConfigError::Invalid {
            setting,
            detail: e.into_inner().to_string(),
        }
    })
}

/// With `[nats] namespace` set, the name settings of `[nats]` left out default to the
/// namespace's names ([`NatsConfig::names`]); an explicit name wins.
fn name_from_namespace(table: &mut toml::Table) {
    let Some(nats) = table.get_mut("nats").and_then(toml::Value::as_table_mut) else {
        return;
    };
    let Some(namespace) = nats.get("namespace").and_then(toml::Value::as_str) else {
        return;
    };
    let n = NatsConfig::names(namespace);
    for (key, name) in [
        ("stream", n.stream),
        ("subject_prefix", n.subject_prefix),
        ("dlq_stream", n.dlq_stream),
        ("dlq_subject_prefix", n.dlq_subject_prefix),
    ] {
        nats.entry(key).or_insert(toml::Value::String(name));
    }
}

fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let Some(rest) = var.strip_prefix("TALLY_") else {
        return Ok(());
    };
    let Some((section, key)) = rest.split_once("__") else {
        return Ok(());
    };
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    let env_err = |detail: String| ConfigError::Env {
        var: var.to_owned(),
        detail,
    };
    if !SECTIONS.contains(&section.as_str()) || key.is_empty() {
        return Err(env_err(format!("no section `{section}` or empty key")));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let entry = table
        .entry(section.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(section_table) = entry.as_table_mut() else {
        return Err(env_err(format!("section `{section}` is not a table")));
    };
    section_table.insert(key, parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        nats: NatsConfig,
        #[serde(default)]
        clickhouse: ClickHouseConfig,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_and_env_overrides_win() {
        let s: Sample = from_str_with_env(
            "[clickhouse]\ndatabase = \"a\"\n",
            Path::new("x.toml"),
            env(&[
                ("TALLY_CLICKHOUSE__DATABASE", "b"),
                ("TALLY_NATS__DUPLICATE_WINDOW_SECS", "30"),
                ("OTHER", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.clickhouse.database, "b");
        assert_eq!(s.nats.duplicate_window_secs, 30);
        assert_eq!(s.nats.stream, "USAGE");
    }

    #[test]
    fn errors_name_the_setting() {
        let err = from_str_with_env::<Sample>(
            "[nats]\nduplicate_window_secs = \"soon\"\n",
            Path::new("x"),
            vec![],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("nats.duplicate_window_secs"),
            "{err}"
        );
        let err = from_str_with_env::<Sample>("[nats]\nurll = \"x\"\n", Path::new("x"), vec![])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("setting `nats.urll`: unknown field"),
            "{err}"
        );
        let err = from_str_with_env::<Sample>(
            "",
            Path::new("x"),
            env(&[("TALLY_CLICKHOUSE__DATABSE", "tally")]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("setting `clickhouse.databse`: unknown field"),
            "{err}"
        );
        let err = from_str_with_env::<Sample>("[natz]\n", Path::new("x"), vec![]).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownSection(s) if s == "natz"));
    }

    #[test]
    fn validation_names_the_setting() {
        let n = NatsConfig {
            subject_prefix: "a.b".into(),
            ..NatsConfig::default()
        };
        assert!(n
            .validate()
            .unwrap_err()
            .to_string()
            .contains("nats.subject_prefix"));
        let c = ClickHouseConfig {
            database: "drop table".into(),
            ..ClickHouseConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("clickhouse.database"));
    }

    /// Issue 16, finding 4: one namespace names every NATS resource, so two deployments (or
    /// a test and production) on one NATS share none.
    #[test]
    fn a_namespace_names_every_nats_resource() {
        let s: Sample =
            from_str_with_env("[nats]\nnamespace = \"staging\"\n", Path::new("x"), vec![]).unwrap();
        let n = &s.nats;
        n.validate().unwrap();
        assert_eq!(
            (n.stream.as_str(), n.subject_prefix.as_str()),
            ("STAGING_USAGE", "staging_usage")
        );
        assert_eq!(
            (n.dlq_stream.as_str(), n.dlq_subject_prefix.as_str()),
            ("STAGING_USAGE_DLQ", "staging_usage_dlq")
        );
        assert_eq!(n.invoice_numbers_bucket(), "STAGING_INVOICE_NUMBERS");
        assert_eq!(n.lease_bucket(), "STAGING_USAGE_AGGREGATORS");
        // from the environment too, and an explicit name still wins (upgrades)
        let s: Sample = from_str_with_env(
            "[nats]\nstream = \"USAGE\"\n",
            Path::new("x"),
            env(&[("TALLY_NATS__NAMESPACE", "prod")]),
        )
        .unwrap();
        assert_eq!(s.nats.stream, "USAGE");
        assert_eq!(s.nats.subject_prefix, "prod_usage");
        // no namespace: the names of before
        let d = NatsConfig::default();
        assert_eq!(
            (d.stream.as_str(), d.invoice_numbers_bucket().as_str()),
            ("USAGE", "INVOICE_NUMBERS")
        );
        assert_eq!(
            NatsConfig::default().with_namespace("staging").stream,
            "STAGING_USAGE"
        );
        let bad = NatsConfig {
            namespace: "Prod".into(),
            ..NatsConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("nats.namespace"));
    }

    #[test]
    fn stream_limits_are_minus_one_or_sensible() {
        let with = |f: fn(&mut NatsConfig)| {
            let mut n = NatsConfig::default();
            f(&mut n);
            n.validate()
        };
        assert!(with(|_| {}).is_ok());
        assert!(with(|n| n.max_bytes = -1).is_ok());
        let err = with(|n| n.max_bytes = 0).unwrap_err().to_string();
        assert!(err.contains("nats.max_bytes"), "{err}");
        let err = with(|n| n.dlq_duplicate_window_secs = 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats.dlq_duplicate_window_secs"), "{err}");
        let err = with(|n| n.tls_cert_file = "c.pem".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats.tls_key_file"), "{err}");
    }

    /// Issue 16, finding 12: ClickHouse over https. The TLS files are read at start, so a
    /// missing or unusable one stops the service there, naming its setting; TLS settings
    /// with a plain URL and other schemes are refused.
    #[test]
    fn clickhouse_tls_settings_are_checked_at_start() {
        let dir = std::env::temp_dir().join(format!("tally-ch-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not-a-certificate.pem");
        std::fs::write(&not_pem, "just text\n").unwrap();
        let missing = dir.join("missing-ca.pem").display().to_string();
        let with = |f: &dyn Fn(&mut ClickHouseConfig)| {
            let mut c = ClickHouseConfig {
                url: "https://clickhouse.internal:8443".into(),
                ..ClickHouseConfig::default()
            };
            f(&mut c);
            c.validate().map_err(|e| e.to_string())
        };
        let err = with(&|c| c.tls_ca_file = missing.clone()).unwrap_err();
        assert!(
            err.contains("clickhouse.tls_ca_file") && err.contains(&missing),
            "{err}"
        );
        let err = with(&|c| c.tls_ca_file = not_pem.display().to_string()).unwrap_err();
        assert!(
            err.contains("clickhouse.tls_ca_file") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = with(&|c| c.tls_cert_file = "client.pem".into()).unwrap_err();
        assert!(err.contains("clickhouse.tls_key_file"), "{err}");
        let err = with(&|c| {
            c.url = "http://10.0.0.5:8123".into();
            c.tls_ca_file = missing.clone();
        })
        .unwrap_err();
        assert!(
            err.contains("clickhouse.tls_ca_file") && err.contains("plain http://"),
            "{err}"
        );
        let err = with(&|c| c.url = "ftp://clickhouse.internal".into()).unwrap_err();
        assert!(err.contains("clickhouse.url"), "{err}");
        // plain http (loopback or not) stays valid: a private network is the operator's call
        assert!(with(&|c| c.url = "http://clickhouse:8123".into()).is_ok());
        assert!(ClickHouseConfig::default().validate().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cluster_needs_a_quorum_of_two_replicas() {
        let on = |quorum: u32| ClickHouseConfig {
            cluster: Some("tally".into()),
            insert_quorum: quorum,
            ..ClickHouseConfig::default()
        };
        assert!(on(2).validate().is_ok());
        let err = on(1).validate().unwrap_err().to_string();
        assert!(err.contains("clickhouse.insert_quorum"), "{err}");
        let bad_name = ClickHouseConfig {
            cluster: Some("a b".into()),
            ..ClickHouseConfig::default()
        };
        assert!(bad_name
            .validate()
            .unwrap_err()
            .to_string()
            .contains("clickhouse.cluster"));
        let nats = NatsConfig {
            replicas: 7,
            ..NatsConfig::default()
        };
        assert!(nats
            .validate()
            .unwrap_err()
            .to_string()
            .contains("nats.replicas"));
    }
}
