//! Issue 16, finding 11: notifications went over `http://` only, all signed with one secret,
//! so any customer's receiver could forge notices to every other. Now they go over `https://`
//! with the receiver's certificate verified, each customer's signed with its own secret.
//! Certificates are made by the test with `openssl` (a CA and a server certificate for
//! 127.0.0.1); the receiver is a real TLS server (rustls) on loopback.

mod support;

use std::collections::BTreeMap;

use support::tls::{certificates, tls_receiver};
use support::*;
use tally_payments::config::{DunningConfig, SecretString};
use tally_payments::dunning::{self, deliver};
use tally_payments::signature::Secret;
use tally_platform::own_server::temp_dir;
use tally_platform::testkit::TestEnv;
use tally_platform::Profile;

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
