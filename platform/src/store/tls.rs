//! ClickHouse over `https://`: the HTTP client every `https` [`super::server`] runs on.
//!
//! The `clickhouse` crate is built without its TLS features (they would bring hyper-rustls
//! and a second crypto library); this module gives it a hyper-util client whose connector
//! opens the TCP connection with hyper-util's `HttpConnector` and then the TLS session with
//! the rustls and tokio-rustls that NATS already uses. The server's certificate is verified
//! against `clickhouse.tls_ca_file` (a private CA) or, when that is empty, the system's roots
//! (rustls-native-certs); its name must match the URL's host (a DNS name or an IP address in
//! the certificate's subject alternative names). With `clickhouse.tls_cert_file` and
//! `clickhouse.tls_key_file` the client presents a certificate (mutual TLS).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ClickHouseConfig, ConfigError};

/// What the crate's own client uses: TCP keepalive, and idle connections closed before
/// ClickHouse's 3 s `keep_alive_timeout` closes them.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// A server that accepts the TCP connection and never finishes the handshake fails the
/// request after this long instead of holding it forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings of `cfg`, read and checked: the roots to verify the server with and the
/// client certificate, if any. Every error names the setting (`clickhouse.tls_ca_file`, ...)
/// and the file. [`ClickHouseConfig::validate`] calls this, so a service refuses to start on
/// a missing or unreadable file instead of failing its first query.
pub fn client_config(cfg: &ClickHouseConfig) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("clickhouse.url", format!("TLS: {e}")))?
        .with_root_certificates(roots(cfg)?);
    let config = if cfg.tls_cert_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = certificates("clickhouse.tls_cert_file", &cfg.tls_cert_file)?;
        let key =
            PrivateKeyDer::from_pem_slice(&read("clickhouse.tls_key_file", &cfg.tls_key_file)?)
                .map_err(|e| {
                    ConfigError::invalid(
                        "clickhouse.tls_key_file",
                        format!("{}: no PEM private key ({e})", cfg.tls_key_file),
                    )
                })?;
        builder.with_client_auth_cert(certs, key).map_err(|e| {
            ConfigError::invalid(
                "clickhouse.tls_key_file",
                format!(
                    "{} does not go with clickhouse.tls_cert_file {}: {e}",
                    cfg.tls_key_file, cfg.tls_cert_file
                ),
            )
        })?
    };
    Ok(Arc::new(config))
}

fn read(setting: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::invalid(setting, format!("{path}: {e}")))
}

/// Every certificate in the PEM file `path`; at least one.
fn certificates(setting: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(setting, format!("{path}: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            setting,
            format!("{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"),
        ));
    }
    Ok(certs)
}

fn roots(cfg: &ClickHouseConfig) -> Result<RootCertStore, ConfigError> {
    const SETTING: &str = "clickhouse.tls_ca_file";
    let mut roots = RootCertStore::empty();
    if cfg.tls_ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        let (added, _unusable) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
            return Err(ConfigError::invalid(
                SETTING,
                format!(
                    "empty, and no system root certificate was found to verify {} with \
                     ({}); name the PEM file of the CA that signed the server's certificate",
                    cfg.url,
                    if errors.is_empty() {
                        "none installed".to_owned()
                    } else {
                        errors.join("; ")
                    }
                ),
            ));
        }
        return Ok(roots);
    }
    for cert in certificates(SETTING, &cfg.tls_ca_file)? {
        roots.add(cert).map_err(|e| {
            ConfigError::invalid(
                SETTING,
                format!("{}: not a usable CA certificate: {e}", cfg.tls_ca_file),
            )
        })?;
    }
    Ok(roots)
}

/// The HTTP client of an `https://` ClickHouse: hyper-util's pool over [`Connector`]. When
/// the TLS settings cannot be used (a file removed since the start), every connection fails
/// with the reason, naming the setting.
pub(super) fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    let mut tcp = HttpConnector::new();
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.enforce_http(false);
    let connector = Connector {
        tcp,
        tls: client_config(cfg)
            .map(TlsConnector::from)
            .map_err(|e| Arc::from(e.to_string())),
        roots: Arc::from(if cfg.tls_ca_file.is_empty() {
            "the system's root certificates".to_owned()
        } else {
            format!("clickhouse.tls_ca_file {}", cfg.tls_ca_file)
        }),
    };
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    clickhouse::Client::with_http_client(http)
}

/// Opens TCP with hyper-util's connector, then TLS with the configured roots and client
/// certificate, to the URL's host (the name the certificate must carry).
#[derive(Clone)]
pub(super) struct Connector {
    tcp: HttpConnector,
    tls: Result<TlsConnector, Arc<str>>,
    /// What the server's certificate is checked against, for errors.
    roots: Arc<str>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed TLS connection to ClickHouse; its message says TLS, the server and the roots.
#[derive(Debug)]
struct TlsError(String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl tower_service::Service<Uri> for Connector {
    type Response = TlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.tcp, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let roots = self.roots.clone();
        let connecting = tower_service::Service::call(&mut self.tcp, uri.clone());
        Box::pin(async move {
            let tls = tls.map_err(|e| TlsError(format!("TLS to ClickHouse is not set up: {e}")))?;
            if uri.scheme_str() != Some("https") {
                return Err(TlsError(format!(
                    "{uri}: the ClickHouse client for https:// got another scheme"
                ))
                .into());
            }
            let host = uri.host().unwrap_or_default();
            let server = format!("{host}:{}", uri.port_u16().unwrap_or(443));
            // an IPv6 host comes bracketed; the certificate names the bare address
            let name = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(name.to_owned())
                .map_err(|e| TlsError(format!("TLS to ClickHouse at {server}: {e}")))?;
            let tcp = connecting.await?.into_inner();
            let session = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| {
                    TlsError(format!(
                        "TLS handshake with ClickHouse at {server}: no answer within {} s (is it the https port?)",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| {
                    TlsError(format!(
                        "TLS handshake with ClickHouse at {server} failed: {e} (its certificate is checked against {roots})"
                    ))
                })?;
            Ok(TlsStream(TokioIo::new(session)))
        })
    }
}

/// A TLS session to ClickHouse, as hyper reads and writes it.
pub(super) struct TlsStream(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for TlsStream {
    fn connected(&self) -> Connected {
        self.0.inner().get_ref().0.connected()
    }
}

impl Read for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}
