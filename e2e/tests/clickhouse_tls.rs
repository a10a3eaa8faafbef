//! Issue 16, finding 12: ClickHouse over https. An `https://` URL used to be refused at
//! start (the client had no TLS); now every client built by `store::server` speaks TLS and
//! verifies the server's certificate.
//!
//! The test makes a CA, a server certificate for 127.0.0.1 and a client certificate with
//! `openssl`, plus a second CA that signs nothing the server trusts, and starts a
//! clickhouse-server 18.16 of its own that listens on an https port only. It verifies client
//! certificates when they are presented (`relaxed`), so the one server shows both sides:
//! - with `clickhouse.tls_ca_file` the migrations run and queries answer, without and with a
//!   client certificate (`tls_cert_file`/`tls_key_file`);
//! - a server certificate from another CA, or one that does not name the URL's host, is
//!   refused by the client, with an error that says TLS;
//! - a client certificate from another CA is refused by the server;
//! - a configuration naming a CA file that does not exist does not pass the check every
//!   service runs at start, and the error names the setting.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tally_e2e::certificate;
use tally_platform::config::{self, ClickHouseConfig};
use tally_platform::own_server::{find_binary, free_port, temp_dir, OwnServer};
use tally_platform::{migrate, store};

/// A clickhouse-server with only an https port (and the native port it always opens), its
/// certificate `server.pem`, verifying presented client certificates against `ca.pem`.
fn start_clickhouse(dir: &Path) -> (OwnServer, u16) {
    let (https, tcp) = (free_port().unwrap(), free_port().unwrap());
    let d = dir.display();
    // what 18.16 needs to run from `dir` (it creates `data/` and `tmp/`), on https only
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
    <listen_host>127.0.0.1</listen_host>
    <https_port>{https}</https_port>
    <tcp_port>{tcp}</tcp_port>
    <openSSL>
        <server>
            <certificateFile>{d}/server.pem</certificateFile>
            <privateKeyFile>{d}/server.key</privateKeyFile>
            <caConfig>{d}/ca.pem</caConfig>
            <verificationMode>relaxed</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
        </server>
    </openSSL>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <mark_cache_size>67108864</mark_cache_size>
    <users_config>{d}/users.xml</users_config>
</yandex>
"#
    );
    let users = r#"<?xml version="1.0"?>
<yandex>
    <profiles><default/></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default/></quotas>
</yandex>
"#;
    std::fs::write(dir.join("config.xml"), config).unwrap();
    std::fs::write(dir.join("users.xml"), users).unwrap();
    let binary = find_binary("clickhouse-server")
        .expect("clickhouse-server is missing: run scripts/stack.sh up (it installs it)");
    let child = Command::new(binary)
        .arg(format!("--config-file={d}/config.xml"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting clickhouse-server");
    (
        OwnServer {
            child,
            dir: dir.to_owned(),
        },
        https,
    )
}

/// `err` and its sources, as an operator reads them (`anyhow`'s "caused by" chain).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

/// `SELECT 1` on the server (no database needed), or the error's whole chain.
async fn select_one(cfg: &ClickHouseConfig) -> Result<u8, String> {
    store::server(cfg)
        .query("SELECT toUInt8(1)")
        .fetch_one::<u8>()
        .await
        .map_err(|e| chain(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_over_https_verifies_the_server_and_presents_the_client_certificate() {
    let dir = temp_dir("ch-tls").expect("a directory for the server and its certificates");
    certificate(&dir, "ca", "tally-test-ca", None, &[]);
    certificate(&dir, "other-ca", "another-ca", None, &[]);
    certificate(
        &dir,
        "server",
        "127.0.0.1",
        Some("ca"),
        &[
            "subjectAltName=IP:127.0.0.1",
            "basicConstraints=CA:FALSE",
            "extendedKeyUsage=serverAuth",
        ],
    );
    for (name, ca) in [("client", "ca"), ("rogue-client", "other-ca")] {
        certificate(
            &dir,
            name,
            "tally-services",
            Some(ca),
            &["basicConstraints=CA:FALSE", "extendedKeyUsage=clientAuth"],
        );
    }
    let file = |name: &str| dir.join(name).display().to_string();
    let (_server, port) = start_clickhouse(&dir);
    let trusted = ClickHouseConfig {
        url: format!("https://127.0.0.1:{port}"),
        tls_ca_file: file("ca.pem"),
        ..ClickHouseConfig::default()
    };
    trusted.validate().expect("the TLS settings are valid");

    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(20) {
        match select_one(&trusted).await {
            Ok(_) => break,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        select_one(&trusted).await,
        Ok(1),
        "clickhouse-server did not answer over https within 20 s: {last}; its errors: {}",
        std::fs::read_to_string(dir.join("server.err.log")).unwrap_or_default()
    );

    // Migrations and queries over https, with the private CA configured.
    let applied = migrate::apply(&trusted)
        .await
        .unwrap_or_else(|e| panic!("migrating over https: {}", chain(&e)));
    let db = store::connect(&trusted);
    let (recorded, skipped): (u64, u64) = db
        .query(
            "SELECT (SELECT count() FROM schema_migrations), \
             (SELECT count() FROM schema_migrations_skipped)",
        )
        .fetch_one()
        .await
        .expect("a query over https");
    // every migration is applied, or skipped for a capability 18.16 lacks, and recorded
    assert!(!applied.is_empty());
    assert_eq!(recorded, applied.len() as u64);
    assert_eq!(
        recorded + skipped,
        migrate::MIGRATIONS.len() as u64,
        "{applied:?}"
    );

    // Mutual TLS: the CA's client certificate is accepted, another CA's is refused by the
    // server (it verifies what a client presents).
    let with_client = |cert: &str, key: &str| ClickHouseConfig {
        tls_cert_file: file(cert),
        tls_key_file: file(key),
        ..trusted.clone()
    };
    let mutual = with_client("client.pem", "client.key");
    mutual.validate().expect("a valid client certificate");
    assert_eq!(select_one(&mutual).await, Ok(1));
    let rogue = with_client("rogue-client.pem", "rogue-client.key");
    rogue.validate().expect("the files themselves are fine");
    let refused = select_one(&rogue)
        .await
        .expect_err("a client certificate from another CA was accepted");
    // TLS 1.3: the client learns of the refusal on its first read, as the server's alert
    assert!(refused.contains("fatal alert"), "{refused}");

    // The client refuses a server whose certificate another CA signed, and one whose
    // certificate does not name the host of the URL; the error says TLS and why.
    let untrusted = ClickHouseConfig {
        tls_ca_file: file("other-ca.pem"),
        ..trusted.clone()
    };
    untrusted.validate().expect("the other CA file is valid");
    let err = migrate::apply(&untrusted)
        .await
        .map_err(|e| chain(&e))
        .expect_err("a server certificate from an untrusted CA was accepted");
    assert!(
        err.contains("TLS handshake with ClickHouse at 127.0.0.1")
            && err.contains("UnknownIssuer")
            && err.contains("other-ca.pem"),
        "{err}"
    );
    let system_roots = ClickHouseConfig {
        tls_ca_file: String::new(),
        ..trusted.clone()
    };
    match system_roots.validate() {
        // none of the system's roots signed the test's server
        Ok(()) => {
            let err = select_one(&system_roots)
                .await
                .expect_err("verified by the system's roots");
            assert!(
                err.contains("TLS handshake") && err.contains("UnknownIssuer"),
                "{err}"
            );
        }
        // a machine without root certificates: refused at start, naming the setting
        Err(e) => assert!(e.to_string().contains("clickhouse.tls_ca_file"), "{e}"),
    }
    let by_name = ClickHouseConfig {
        url: format!("https://localhost:{port}"),
        ..trusted.clone()
    };
    let err = select_one(&by_name)
        .await
        .expect_err("a certificate for 127.0.0.1 was accepted for localhost");
    assert!(
        err.contains("TLS handshake") && err.contains("not valid for name \"localhost\""),
        "{err}"
    );

    // A service refuses to start when the CA file is missing, naming the setting: every
    // binary loads its configuration and validates [clickhouse] before anything else.
    let missing = file("no-such-ca.pem");
    let toml =
        format!("[clickhouse]\nurl = \"https://127.0.0.1:{port}\"\ntls_ca_file = \"{missing}\"\n");
    #[derive(serde::Deserialize)]
    struct Service {
        clickhouse: ClickHouseConfig,
    }
    let cfg: Service =
        config::from_str_with_env(&toml, Path::new("tally.toml"), std::iter::empty())
            .expect("the file parses");
    let err = cfg
        .clickhouse
        .validate()
        .expect_err("a missing CA file passed the start check")
        .to_string();
    assert!(
        err.contains("clickhouse.tls_ca_file") && err.contains(&missing),
        "{err}"
    );
    // and a client built anyway (a file removed after the start) never falls back to
    // plain or unverified connections: every query fails, naming the setting
    let err = select_one(&cfg.clickhouse)
        .await
        .expect_err("a query without the CA file");
    assert!(
        err.contains("TLS to ClickHouse is not set up") && err.contains("clickhouse.tls_ca_file"),
        "{err}"
    );
}
