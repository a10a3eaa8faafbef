//! Connecting to ClickHouse, and the column encodings every stage shares.
//!
//! The client runs with row validation off: ClickHouse 18.16 lacks
//! `RowBinaryWithNamesAndTypes`, so row structs must list columns in table order. Decimal
//! columns are `Decimal(38, 9)`, carried as `i128` scaled by 10^9 ([`dec9`]); timestamps are
//! `DateTime` (`u32` seconds) plus an `Int64` milliseconds column where precision matters.

use std::sync::Once;

use clickhouse::Client;

use crate::config::ClickHouseConfig;

pub mod charges;
mod tls;
pub(crate) use tls::client_config as tls_client_config;

/// A client bound to the configured database.
pub fn connect(cfg: &ClickHouseConfig) -> Client {
    server(cfg).with_database(&cfg.database)
}

/// A client for server-level statements (creating the database). On a cluster
/// (`clickhouse.cluster`), every statement it sends carries [`cluster_settings`].
///
/// Every ClickHouse client of the services is built here. An `https://` URL runs over TLS,
/// the server's certificate verified against `clickhouse.tls_ca_file` or the system's roots,
/// with `clickhouse.tls_cert_file` presented when set ([`tls`]); `http://` runs on the
/// crate's plain client, and a plain URL to another machine is logged once as a warning.
pub fn server(cfg: &ClickHouseConfig) -> Client {
    let client = if cfg.url.starts_with("https://") {
        tls::client(cfg)
    } else {
        warn_if_plain_remote(&cfg.url);
        Client::default()
    };
    let client = client
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_validation(false);
    cluster_settings(cfg)
        .into_iter()
        .fold(client, |c, (name, value)| c.with_setting(name, value))
}

/// The host of a plain `http://` URL that is not this machine (loopback addresses and
/// `localhost` are), if any.
fn plain_remote_host(url: &str) -> Option<String> {
    let uri: hyper::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// Logs once per process that ClickHouse is reached without TLS on another machine: the
/// password and the billing data cross that network in clear. Not refused: a private network
/// (a compose or Kubernetes network, a VPN) is a legitimate choice (docs/SECURITY.md, "TLS").
fn warn_if_plain_remote(url: &str) {
    static WARNED: Once = Once::new();
    if let Some(host) = plain_remote_host(url) {
        WARNED.call_once(|| {
            tracing::warn!(
                clickhouse = %host,
                "ClickHouse is reached over plain http on another machine: its password and the \
                 billing data cross the network unencrypted; use an https:// clickhouse.url \
                 (with clickhouse.tls_ca_file for a private CA) unless that network is private \
                 (docs/SECURITY.md, TLS)"
            );
        });
    }
}

/// The settings that keep the exactly-once argument true on replicated tables (empty on one
/// server; docs/RELIABILITY.md, "On a cluster"):
/// - `insert_quorum`: a write succeeds only once `clickhouse.insert_quorum` replicas have it,
///   so what the aggregator commits (and acknowledges to JetStream) survives the loss of a
///   replica, and an abort recorded before a retry is on those replicas before the retry's
///   rows exist anywhere;
/// - `insert_quorum_timeout`: how long such a write waits (`insert_quorum_timeout_secs`); a
///   write that times out fails with "unknown status" and is treated as failed (an
///   aggregator batch is then aborted and retried under a new id);
/// - `select_sequential_consistency = 1`: a read is served only by a replica that has every
///   quorum write (else it fails and is retried), so a takeover's dedup rebuild, a seal and
///   a billing read never miss a committed batch or an abort.
pub fn cluster_settings(cfg: &ClickHouseConfig) -> Vec<(&'static str, String)> {
    if cfg.cluster.is_none() {
        return Vec::new();
    }
    vec![
        ("insert_quorum", cfg.insert_quorum.to_string()),
        (
            "insert_quorum_timeout",
            (cfg.insert_quorum_timeout_secs.saturating_mul(1000)).to_string(),
        ),
        ("select_sequential_consistency", "1".to_owned()),
    ]
}

/// Serde adapter for `Decimal(38, 9)` columns: a `rust_decimal::Decimal` as `i128` units of
/// 10^-9. Values with more than 9 decimal places are refused, never rounded silently.
pub mod dec9 {
    use rust_decimal::Decimal;
    use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

    pub const SCALE: u32 = 9;

    /// `value` as i128 units of 10^-9, if it has at most 9 decimal places.
    pub fn to_units(value: Decimal) -> Option<i128> {
        let mut v = value.normalize();
        if v.scale() > SCALE {
            return None;
        }
        v.rescale(SCALE);
        (v.scale() == SCALE).then(|| v.mantissa())
    }

    /// i128 units of 10^-9 back to a decimal.
    pub fn from_units(units: i128) -> Option<Decimal> {
        Decimal::try_from_i128_with_scale(units, SCALE)
            .ok()
            .map(|d| d.normalize())
    }

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        let units = to_units(*value)
            .ok_or_else(|| S::Error::custom(format!("{value} has more than 9 decimal places")))?;
        s.serialize_i128(units)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let units = i128::deserialize(d)?;
        from_units(units)
            .ok_or_else(|| D::Error::custom(format!("decimal {units}e-9 out of range")))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_refuses_excess_precision() {
            let d = Decimal::new(12345, 3);
            assert_eq!(to_units(d), Some(12_345_000_000));
            assert_eq!(from_units(12_345_000_000), Some(d));
            assert_eq!(to_units(Decimal::new(1, 10)), None);
            assert_eq!(to_units(Decimal::new(10, 10)), Some(1));
        }
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;

    #[test]
    fn only_a_cluster_gets_quorum_settings() {
        assert!(cluster_settings(&ClickHouseConfig::default()).is_empty());
        let cfg = ClickHouseConfig {
            cluster: Some("tally".into()),
            insert_quorum: 3,
            insert_quorum_timeout_secs: 20,
            ..ClickHouseConfig::default()
        };
        assert_eq!(
            cluster_settings(&cfg),
            vec![
                ("insert_quorum", "3".to_owned()),
                ("insert_quorum_timeout", "20000".to_owned()),
                ("select_sequential_consistency", "1".to_owned()),
            ]
        );
    }
}

#[cfg(test)]
mod plain_http_tests {
    use super::*;

    #[test]
    fn only_plain_urls_to_other_machines_are_remote() {
        for local in [
            "http://127.0.0.1:8123",
            "http://127.0.0.2:8123",
            "http://localhost:8123",
            "http://[::1]:8123",
            "https://clickhouse.internal:8443",
        ] {
            assert_eq!(plain_remote_host(local), None, "{local}");
        }
        assert_eq!(
            plain_remote_host("http://clickhouse:8123").as_deref(),
            Some("clickhouse:8123")
        );
        assert_eq!(
            plain_remote_host("http://user:secret@10.0.0.5").as_deref(),
            Some("10.0.0.5"),
            "the host only, never the credentials"
        );
    }
}

/// Converts milliseconds since the epoch to a `DateTime` column value (seconds, floored).
pub fn datetime_secs(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000)).unwrap_or(if ms < 0 { 0 } else { u32::MAX })
}
