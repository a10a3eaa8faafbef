//! The `tally-payments serve` binary: starts from a configuration file plus `TALLY_*`
//! environment secrets, answers `/healthz` and a signed webhook, exports its metrics (the
//! trial-balance gauge at 0 after the first ledger sync), refuses to start without its secrets
//! (naming the setting, never printing a secret), and exits 0 on SIGTERM.

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
