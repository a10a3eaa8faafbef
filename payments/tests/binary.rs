//! The `tally-payments serve` binary: starts from a configuration file plus `TALLY_*`
//! environment secrets, answers `/healthz` and a signed webhook, exports its metrics (the
//! trial-balance gauge at 0 after the first ledger sync), refuses to start without its secrets
//! (naming the setting, never printing a secret), and exits 0 on SIGTERM; with a Stripe API
//! key it charges a finalized invoice once.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use tally_platform::own_server::{free_port, temp_dir};
use tally_platform::testkit::TestEnv;

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
    assert!(String::from_utf8_lossy(&out.stderr).contains("payments.api_token"));

    let mut c = Command::new(bin);
    base(&mut c);
    let mut child = c
        .env("TALLY_PAYMENTS__API_TOKEN", API_TOKEN)
        .env("TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("TALLY_PORTAL__SIGNING_SECRET", PORTAL_SECRET)
        .env("TALLY_DUNNING__SIGNING_SECRET", "dunning-secret-value")
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
    let (status, reply) = post_webhook(addr, &body, WEBHOOK_SECRET, now).await;
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

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}\n{stderr}");
    for secret in [
        API_TOKEN,
        WEBHOOK_SECRET,
        PORTAL_SECRET,
        "dunning-secret-value",
    ] {
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
        .env("TALLY_PAYMENTS__API_TOKEN", API_TOKEN)
        .env("TALLY_PAYMENTS__STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
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
