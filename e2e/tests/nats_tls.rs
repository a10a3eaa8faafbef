//! Issue 16, finding 12: the pipeline over NATS with TLS on. TLS was documented and never
//! exercised; the services had no setting for a private CA or a client certificate.
//!
//! The test makes a CA, a server certificate for 127.0.0.1 and a client certificate with
//! `openssl`, and starts a nats-server of its own that requires TLS and verifies client
//! certificates (mutual TLS). A client that does not trust the CA, or presents no client
//! certificate, is refused; with `nats.tls_ca_file`, `nats.tls_cert_file`,
//! `nats.tls_key_file` and `nats.tls_required` (`streams::connect`, what every service uses)
//! an SDK agent publishes usage, the real aggregator commits it to ClickHouse and the invoicer
//! numbers invoices in its KV bucket, all over TLS.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tally_platform::own_server::{start_nats, temp_dir};
use tally_platform::streams;
use tally_platform::testkit::TestEnv;
use tokio::io::AsyncReadExt;

mod support;

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

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// `<name>.pem` and `<name>.key`, signed by the CA in `dir`, with `ext` as extensions.
fn signed(dir: &Path, name: &str, cn: &str, ext: &str) {
    let subj = format!("/CN={cn}");
    let (key, csr, pem, cnf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.cnf"),
    );
    let mut req = vec!["req", "-subj", subj.as_str()];
    req.extend(EC);
    req.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
    openssl(dir, &req);
    std::fs::write(dir.join(&cnf), ext).expect("extensions file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &cnf,
            "-out",
            &pem,
        ],
    );
}

/// A CA (`ca.pem`), a server certificate for 127.0.0.1 (`server.pem`, `server.key`) and a
/// client certificate (`client.pem`, `client.key`), both signed by the CA.
fn certificates(dir: &Path) {
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=tally-test-ca"];
    ca.extend(EC);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    signed(
        dir,
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    signed(
        dir,
        "client",
        "tally-services",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Whether a plain client connects (and a round trip answers) within 5 s.
async fn connects(options: async_nats::ConnectOptions, url: &str) -> bool {
    let attempt = async {
        let client = options.connect(url).await.ok()?;
        client.flush().await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Some(()))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_nats_with_mutual_tls_and_untrusted_clients_are_refused() {
    tally_platform::telemetry::init_logs(&Default::default());
    let env = TestEnv::new("e2e_nats_tls").await;
    let certs = temp_dir("nats-tls-certs").expect("a directory for the certificates");
    certificates(&certs);
    let tls = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
        path(&certs, "server.pem"),
        path(&certs, "server.key"),
        path(&certs, "ca.pem"),
    );
    let (_server, port) = start_nats(&tls).await.expect("nats-server with TLS");
    let url = format!("nats://127.0.0.1:{port}");

    // The server demands TLS before anything else: its greeting says so.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    let mut info = vec![0u8; 4096];
    let n = raw.read(&mut info).await.expect("INFO");
    let info = String::from_utf8_lossy(&info[..n]);
    assert!(info.contains("\"tls_required\":true"), "{info}");

    // Refused: a client that does not trust the private CA (the system's roots only), and
    // one that trusts it but presents no certificate.
    assert!(
        !connects(async_nats::ConnectOptions::new().require_tls(true), &url).await,
        "a client without the CA connected"
    );
    assert!(
        !connects(
            async_nats::ConnectOptions::new()
                .require_tls(true)
                .add_root_certificates(certs.join("ca.pem")),
            &url
        )
        .await,
        "a client without a certificate connected"
    );

    // The services' configuration.
    let nats_cfg = tally_platform::NatsConfig {
        url: url.clone(),
        tls_ca_file: path(&certs, "ca.pem"),
        tls_cert_file: path(&certs, "client.pem"),
        tls_key_file: path(&certs, "client.key"),
        tls_required: true,
        ..env.nats.clone()
    };
    nats_cfg.validate().expect("valid");
    let connect = || async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let client = streams::connect(&nats_cfg).await.expect("connects");
            client.flush().await.expect("a round trip over TLS");
            client
        })
        .await
        .expect("connected over TLS within 10 s")
    };
    let admin_js = async_nats::jetstream::new(connect().await);
    streams::ensure(&admin_js, &nats_cfg)
        .await
        .expect("streams declared over TLS");

    // An agent publishes, and the aggregator consumes and commits, over TLS.
    support::publish_tokens(connect().await, &nats_cfg, "acme", "gpt-4o", 7).await;
    let (stop, agg) = support::aggregate_all(&env, &nats_cfg, connect().await, &admin_js).await;
    let (sum, n): (String, u64) = env
        .db()
        .query("SELECT toString(sum(quantity)), sum(event_count) FROM v_usage WHERE meter = 'llm_tokens'")
        .fetch_one()
        .await
        .expect("usage");
    assert_eq!(
        (
            sum.parse::<rust_decimal::Decimal>()
                .expect("a decimal")
                .normalize()
                .to_string(),
            n
        ),
        ("700".into(), 7)
    );

    // The invoicer numbers invoices in its KV bucket over TLS.
    let numbers = tally_invoicer::numbering::Numbers::open_for(
        connect().await,
        &nats_cfg.invoice_numbers_bucket(),
        1,
        &env.clickhouse.database,
    )
    .await
    .expect("the invoicer opens its bucket over TLS");
    let assigned = numbers
        .assign("tally", &["inv-a".to_owned(), "inv-b".to_owned()])
        .await
        .expect("numbered");
    let mut got: Vec<u64> = assigned.values().copied().collect();
    got.sort_unstable();
    assert_eq!(got, vec![1, 2]);

    stop.cancel();
    let _ = agg.await;
    let _ = std::fs::remove_dir_all(&certs);
    // the streams and the bucket live on the test's own server, gone with it
    env.cleanup().await;
}
