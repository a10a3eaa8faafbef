//! The `tally-payments serve` binary: starts from a configuration file plus `TALLY_*`
//! environment secrets, answers `/healthz` and a signed webhook, exports its metrics (the
//! trial-balance gauge at 0 after the first ledger sync), refuses to start without its secrets
//! or with weak or published ones outside the dev profile (naming the setting, never printing
//! a secret), makes up the missing ones in dev, and exits 0 on SIGTERM; with a Stripe API key
//! it charges a finalized invoice once.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tally_platform::own_server::{free_port, temp_dir};
use tally_platform::secrets::generate_hex;
use tally_platform::testkit::TestEnv;

/// Secrets of the production profile's strength, fresh for each run (never published).
struct Secrets {
    webhook: String,
    portal: String,
    dunning: String,
}

fn fresh() -> Secrets {
    Secrets {
        webhook: format!("whsec_{}", generate_hex(24).unwrap()),
        portal: generate_hex(32).unwrap(),
        dunning: generate_hex(32).unwrap(),
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    drop(stream);
    let (s, body) = request(addr, "GET", path, &[], Vec::new()).await;
    Some((s.as_u16(), String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_from_config_and_env_answers_and_stops_on_sigterm() {
    let env = TestEnv::new("payments_binary").await;
    let db = env.db();
    let inv = past_invoice(&db, "acme", "USD", &[("tokens", 2_500, 0)]).await;
    let dir = temp_dir("payments-binary").expect("temp dir");
    let config = dir.join("tally.toml");
    let (port, metrics_port) = (free_port().unwrap(), free_port().unwrap());
    std::fs::write(
        &config,
        format!(
            "[payments]\nlisten_addr = \"127.0.0.1:{port}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\nledger_sync_secs = 1\n\
             [dunning]\ninterval_secs = 3600\n"
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tally-payments");
    let base = |c: &mut Command| {
        c.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("TALLY_CLICKHOUSE__URL", &env.clickhouse.url)
            .env("TALLY_CLICKHOUSE__DATABASE", &env.clickhouse.database)
            .stdout(Stdio::null());
    };

    // without its secrets it refuses to start, naming the setting
    let mut c = Command::new(bin);
    base(&mut c);
    let out = c.stderr(Stdio::piped()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("payments.stripe_webhook_secret"));

    let secrets = fresh();
    let mut c = Command::new(bin);
    base(&mut c);
    let mut child = c
        .env("TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET", &secrets.webhook)
        .env("TALLY_PORTAL__SIGNING_SECRET", &secrets.portal)
        .env("TALLY_DUNNING__SIGNING_SECRET", &secrets.dunning)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, "/healthz").await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "tally-payments did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = chrono::Utc::now().timestamp();
    let body = stripe_event(
        "evt_bin",
        "payment_intent.succeeded",
        payment_intent("pi_bin", &inv.invoice_id, 2_500, "usd"),
        now,
    );
    let (status, reply) = post_webhook(addr, &body, &secrets.webhook, now).await;
    assert_eq!(
        (status.as_u16(), reply["outcome"].as_str()),
        (200, Some("paid")),
        "{reply}"
    );
    // the ledger sync runs every second and sets the gauge
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, text) = get(metrics, "/metrics").await.expect("metrics");
    assert!(
        text.contains("tally_payments_trial_balance_difference_minor 0"),
        "{text}"
    );
    assert!(
        text.contains("tally_payments_events_total{outcome=\"paid\"} 1"),
        "{text}"
    );

    let (status, stderr) = sigterm(&mut child).await;
    assert!(status.success(), "{status:?}\n{stderr}");
    for secret in [&secrets.webhook, &secrets.portal, &secrets.dunning] {
        assert!(!stderr.contains(secret), "a secret was logged:\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// With a Stripe API key, `serve` charges a finalized invoice of a customer with a Stripe
/// payment profile after its ledger sync: one PaymentIntent, sent to the configured API base,
/// the key never logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_collects_finalized_invoices_through_the_stripe_api() {
    let env = TestEnv::new("payments_binary_collect").await;
    let db = env.db();
    let inv = past_invoice(&db, "acme", "EUR", &[("tokens", 1_234, 0)]).await;
    let profile = tally_payments::profiles::Profile {
        customer: "acme".into(),
        gateway: "stripe".into(),
        provider_customer: "cus_bin".into(),
        payment_method: "pm_bin".into(),
        actor: "api:test".into(),
        at_ms: chrono::Utc::now().timestamp_millis(),
    };
    tally_payments::profiles::append(&db, &profile)
        .await
        .unwrap();
    let (stripe_addr, stripe_got, stripe_stop) = receiver(0).await;
    let dir = temp_dir("payments-binary-collect").expect("temp dir");
    let config = dir.join("tally.toml");
    let (port, metrics_port) = (free_port().unwrap(), free_port().unwrap());
    std::fs::write(
        &config,
        format!(
            "[payments]\nlisten_addr = \"127.0.0.1:{port}\"\nmetrics_addr = \"127.0.0.1:{metrics_port}\"\n\
             ledger_sync_secs = 1\nstripe_api_base = \"http://{stripe_addr}\"\n\
             [features]\ndunning = false\nportal = false\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally-payments"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("TALLY_CLICKHOUSE__URL", &env.clickhouse.url)
        .env("TALLY_CLICKHOUSE__DATABASE", &env.clickhouse.database)
        .env("TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET", fresh().webhook)
        .env("TALLY_PAYMENTS__STRIPE_API_KEY", "sk_test_binary_collect")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while payment_intents_created(&stripe_got.lock().unwrap()).is_empty() {
        assert!(Instant::now() < deadline, "no PaymentIntent was created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a few more syncs: still one request
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}\n{stderr}");
    let got = stripe_got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].idempotency_key,
        format!("tally-{}-0", inv.invoice_id)
    );
    assert_eq!(got[0].authorization, "Bearer sk_test_binary_collect");
    let body = String::from_utf8_lossy(&got[0].body).into_owned();
    assert!(
        body.starts_with("amount=1234&currency=eur&customer=cus_bin&payment_method=pm_bin&confirm=true&off_session=true"),
        "{body}"
    );
    assert!(
        !stderr.contains("sk_test_binary_collect"),
        "the key was logged:\n{stderr}"
    );
    stripe_stop.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// Issue 16, finding 7: `tally-payments` started in the production profile with one-character
/// secrets, and with the fixed values docker-compose shipped. Each of these now stops it
/// before it listens, naming the setting and never the secret; the dev profile still starts
/// with no secret at all (it makes up random ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_or_published_secrets_stop_it_outside_dev_and_dev_starts_without_any() {
    let profiles = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/profiles");
    let run = |profile: &str, env: &[(&str, &str)]| {
        let (port, metrics) = (free_port().unwrap(), free_port().unwrap());
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally-payments"));
        c.arg("serve")
            .arg("--config")
            .arg(format!("{profiles}/{profile}.toml"))
            .env("TALLY_CLICKHOUSE__URL", "http://127.0.0.1:1")
            .env("TALLY_PAYMENTS__LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "TALLY_PAYMENTS__METRICS_ADDR",
                format!("127.0.0.1:{metrics}"),
            )
            .env_remove("TALLY_SECURITY__PROFILE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        (c, port)
    };
    let good = fresh();
    let strong = [
        (
            "TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET",
            good.webhook.as_str(),
        ),
        ("TALLY_PORTAL__SIGNING_SECRET", good.portal.as_str()),
        ("TALLY_DUNNING__SIGNING_SECRET", good.dunning.as_str()),
    ];
    let one_char = [
        ("TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET", "w"),
        ("TALLY_PORTAL__SIGNING_SECRET", "p"),
        ("TALLY_DUNNING__SIGNING_SECRET", "d"),
    ];
    let demo = [
        (
            "TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET",
            "whsec_demo_change_me",
        ),
        (
            "TALLY_PORTAL__SIGNING_SECRET",
            "demo-portal-signing-secret-change-me",
        ),
        (
            "TALLY_DUNNING__SIGNING_SECRET",
            "demo-dunning-signing-secret-change-me",
        ),
    ];
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (one_char.to_vec(), "payments.stripe_webhook_secret"),
        (demo.to_vec(), "payments.stripe_webhook_secret"),
        (
            [&strong[..1], &one_char[1..]].concat(),
            "portal.signing_secret",
        ),
        ([&strong[..1], &demo[1..]].concat(), "portal.signing_secret"),
        (
            [&strong[..2], &demo[2..]].concat(),
            "dunning.signing_secret",
        ),
        (
            [
                &strong[..],
                &[(
                    "TALLY_PAYMENTS__API_TOKEN",
                    "demo-payments-token-change-me-00",
                )],
            ]
            .concat(),
            "payments.api_token",
        ),
    ];
    for profile in ["production", "staging"] {
        for (env, setting) in &cases {
            // staging keeps dunning off: its secret is not needed there
            if profile == "staging" && *setting == "dunning.signing_secret" {
                continue;
            }
            let (mut c, _) = run(profile, env);
            let out = c.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{profile} {setting}: started\n{stderr}"
            );
            assert!(stderr.contains(setting), "{profile} {setting}:\n{stderr}");
            for (_, secret) in env {
                if secret.len() > 3 {
                    assert!(!stderr.contains(secret), "a secret was printed:\n{stderr}");
                }
            }
        }
    }

    // dev: no secret given, it starts (with random ones) and answers
    let (mut c, port) = run("dev", &[]);
    let mut child = c.spawn().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, "/healthz").await.map(|r| r.0) != Some(200) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("dev did not start: {status:?}\n{stderr}");
        }
        assert!(Instant::now() < deadline, "dev did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
