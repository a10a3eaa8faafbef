//! HTTPS receivers for notification tests: certificates made with `openssl` (a CA and a
//! server certificate for 127.0.0.1) and a rustls server on loopback that records every
//! request and answers as the test says.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tally_platform::shutdown::Shutdown;

use super::Received;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (the test makes its certificates with it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 it signed (`server.pem`, `server.key`).
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=tally-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// How a receiver answers a request: its status and how long it waits before answering,
/// given the request's path and how many requests on that path it had before.
pub type Answer = Arc<dyn Fn(&str, usize) -> (u16, Duration) + Send + Sync>;

/// An HTTPS receiver on loopback presenting `cert`: records every request, answers 200.
pub async fn tls_receiver(
    cert: &Path,
    key: &Path,
) -> (SocketAddr, Arc<Mutex<Vec<Received>>>, Shutdown) {
    tls_receiver_answering(cert, key, Arc::new(|_, _| (200, Duration::ZERO))).await
}

/// An HTTPS receiver on loopback presenting `cert`: records every request when it arrives,
/// answers as `answer` says.
pub async fn tls_receiver_answering(
    cert: &Path,
    key: &Path,
    answer: Answer,
) -> (SocketAddr, Arc<Mutex<Vec<Received>>>, Shutdown) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let stop = Shutdown::new();
    let (g, s) = (got.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = s.cancelled() => break,
                a = listener.accept() => match a { Ok((t, _)) => t, Err(_) => continue },
            };
            let (acceptor, g, answer) = (acceptor.clone(), g.clone(), answer.clone());
            tokio::spawn(async move {
                // a client that does not trust the certificate aborts the handshake here
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (g, answer) = (g.clone(), answer.clone());
                        async move {
                            let received = Received::read(req).await;
                            let (status, wait) = {
                                let mut got = g.lock().unwrap();
                                let before = got.iter().filter(|r| r.path == received.path).count();
                                let a = answer(&received.path, before);
                                got.push(received);
                                a
                            };
                            tokio::time::sleep(wait).await;
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, got, stop)
}
