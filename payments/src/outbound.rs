//! Outgoing HTTP requests (dunning notifications, gateway API calls): one `POST` per call,
//! bounded by a timeout, over plain TCP for `http://` URLs and TLS for `https://`: rustls,
//! the peer's certificate verified (chain, name, validity) against the system's root
//! certificates plus, for private CAs, those of a [`Trust`] file. Which URLs may be plain
//! `http://` is the caller's configuration's decision. Returns the status and at most
//! [`RESPONSE_BYTES_MAX`] of the body. Never logs headers: they carry signatures and API keys.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest response body read.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// The certificates an `https://` peer must chain to.
#[derive(Clone)]
pub struct Trust(Arc<rustls::ClientConfig>);

impl Trust {
    /// The system's root certificates.
    pub fn system() -> Result<Trust, String> {
        static SYSTEM: OnceLock<Result<Trust, String>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| client_config(system_roots()).map(Trust))
            .clone()
    }

    /// The system's roots and every certificate of the PEM file `path` (a private CA).
    pub fn with_pem_file(path: &std::path::Path) -> Result<Trust, String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = system_roots();
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate in the file", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        client_config(roots).map(Trust)
    }
}

/// Posts `body` to `url` with `headers`, within `timeout`; an `https://` peer must chain to
/// `trust` (`None`: the system's roots).
pub async fn post(
    trust: Option<&Trust>,
    url: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Reply, String> {
    let sent = send(trust, url, content_type, headers, body);
    match tokio::time::timeout(timeout, sent).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

async fn send(
    trust: Option<&Trust>,
    url: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Reply, String> {
    let uri: Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "url {url:?}: only http:// and https:// are supported"
            ))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("url {url:?}: no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(hyper::header::HOST, host.as_str())
        .header(hyper::header::CONTENT_TYPE, content_type);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("tls name {host:?}: {e}"))?;
        let config = match trust {
            Some(t) => t.0.clone(),
            None => Trust::system()?.0,
        };
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls {host}:{port}: {e}"))?;
        exchange(stream, request).await
    } else {
        exchange(tcp, request).await
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Reply, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok(Reply { status, body })
}

/// The system's root certificates (read once; empty when there are none).
fn system_roots() -> rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            roots
        })
        .clone()
}

/// A client configuration trusting `roots`, ring as the provider.
fn client_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, String> {
    if roots.is_empty() {
        return Err("no root certificates to verify https:// peers with".into());
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| format!("tls config: {e}"))
}
