//! Issue 16, finding 11: notifications went over `http://` only, all signed with one secret,
//! so any customer's receiver could forge notices to every other. Now they go over `https://`
//! with the receiver's certificate verified, each customer's signed with its own secret.
//! Certificates are made by the test with `openssl` (a CA and a server certificate for
//! 127.0.0.1); the receiver is a real TLS server (rustls) on loopback.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::*;
use tally_payments::config::{DunningConfig, SecretString};
use tally_payments::dunning::{self, deliver};
use tally_payments::signature::Secret;
use tally_platform::own_server::temp_dir;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_platform::Profile;

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

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
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
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

/// An HTTPS receiver on loopback presenting `cert`: records every request, answers 200.
async fn tls_receiver(
    cert: &Path,
    key: &Path,
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
            let (acceptor, g) = (acceptor.clone(), g.clone());
            tokio::spawn(async move {
                // a client that does not trust the certificate aborts the handshake here
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let g = g.clone();
                        async move {
                            let received = Received::read(req).await;
                            g.lock().unwrap().push(received);
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_go_over_verified_https_each_signed_with_its_customers_own_secret() {
    let env = TestEnv::new("dunning_tls").await;
    let db = env.db();
    let dir = temp_dir("dunning-tls").unwrap();
    let (ca, cert, key) = certificates(&dir);
    let (addr, got, stop) = tls_receiver(&cert, &key).await;
    past_invoice(&db, "acme", "USD", &[("tokens", 4_200, 0)]).await;
    past_invoice(&db, "globex", "USD", &[("tokens", 900, 0)]).await;
    let master = tally_platform::secrets::generate_hex(32).unwrap();
    let cfg = DunningConfig {
        signing_secret: SecretString::new(&master),
        reminder_schedule_secs: vec![86_400],
        endpoints: BTreeMap::from([
            (
                "acme".to_owned(),
                format!("https://127.0.0.1:{}/hooks/acme", addr.port()),
            ),
            (
                "globex".to_owned(),
                format!("https://127.0.0.1:{}/hooks/globex", addr.port()),
            ),
        ]),
        ca_file: ca.display().to_string(),
        ..DunningConfig::default()
    };
    cfg.validate(Profile::Production)
        .expect("https endpoints, strong secret");

    // without the CA, the receiver's certificate is not trusted: nothing is delivered
    let untrusting = DunningConfig {
        ca_file: String::new(),
        ..cfg.clone()
    };
    let r = dunning::pass(&db, &untrusting, None, wall_ms())
        .await
        .unwrap();
    assert_eq!(
        (r.decided, r.delivered, r.failed_attempts),
        (2, 0, 2),
        "{r:?}"
    );
    assert!(got.lock().unwrap().is_empty());
    let errors: Vec<String> = db
        .query("SELECT error FROM notification_deliveries")
        .fetch_all()
        .await
        .unwrap();
    assert!(
        errors
            .iter()
            .all(|e| e.contains("certificate") || e.contains("Certificate")),
        "{errors:?}"
    );

    // trusting the CA: both delivered over TLS after the backoff, each with its own secret
    let later = wall_ms() + 120_000;
    let r = dunning::pass(&db, &cfg, None, later).await.unwrap();
    assert_eq!((r.decided, r.delivered), (0, 2), "{r:?}");
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let acme = deliver::endpoint_secret(&master, "acme");
    let globex = deliver::endpoint_secret(&master, "globex");
    for r in &got {
        let (own, other) = match r.path.as_str() {
            "/hooks/acme" => (&acme, &globex),
            "/hooks/globex" => (&globex, &acme),
            p => panic!("unexpected path {p}"),
        };
        assert!(r.verifies(own), "{} verifies with its own secret", r.path);
        assert!(
            !r.verifies(other),
            "{} does not verify with the other's",
            r.path
        );
        assert!(
            !r.verifies(&Secret::new(&master)),
            "nor with the signing secret"
        );
    }
    stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
