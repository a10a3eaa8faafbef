//! Dunning over the real ClickHouse with a tiny local HTTP receiver: a failed payment gets
//! retry notices on the configured schedule, an overdue invoice gets reminders, every
//! notification is signed (with acme's own endpoint secret), a failed delivery is retried after
//! its backoff and every attempt is in the delivery log; a paid invoice and a customer without
//! a URL get nothing.

mod support;

use std::collections::BTreeMap;

use hyper::StatusCode;
use support::*;
use tally_payments::config::{DunningConfig, SecretString};
use tally_payments::dunning;
use tally_payments::dunning::retry::GatewayApi;
use tally_payments::gateway::stripe::Stripe;
use tally_payments::signature::Secret;
use tally_platform::testkit::TestEnv;

const SIGNING: &str = "dunning_test_secret";

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn retries_and_reminders_are_signed_retried_and_logged() {
    let env = TestEnv::new("dunning").await;
    let db = env.db();
    let (rx_addr, received, rx_stop) = receiver(1).await;
    let acme = past_invoice(&db, "acme", "USD", &[("tokens", 4_200, 0)]).await;
    let globex = past_invoice(&db, "globex", "USD", &[("tokens", 100, 0)]).await;
    let server = start(db.clone(), wall_ms).await;
    let cfg = DunningConfig {
        signing_secret: SecretString::new(SIGNING),
        retry_schedule_secs: vec![3_600, 7_200],
        reminder_schedule_secs: vec![86_400, 7 * 86_400],
        delivery_attempts_max: 3,
        delivery_backoff_secs: 60,
        endpoints: BTreeMap::from([("acme".to_owned(), format!("http://{rx_addr}/hooks/billing"))]),
        ..DunningConfig::default()
    };
    // plain http:// receivers on loopback: the dev profile
    cfg.validate(tally_platform::Profile::Dev)
        .expect("valid dunning config");
    // Stripe's API, played by a second local receiver
    let (stripe_addr, stripe_got, stripe_stop) = receiver(0).await;
    let stripe_api = GatewayApi {
        gateway: Box::new(Stripe::new(WEBHOOK_SECRET, 300)),
        base_url: format!("http://{stripe_addr}"),
        api_key: SecretString::new("sk_test_dunning"),
        timeout: std::time::Duration::from_secs(5),
    };

    // the card is declined
    let t0_secs = wall_ms() / 1000;
    let failed = stripe_event(
        "evt_fail",
        "payment_intent.payment_failed",
        payment_intent("pi_d", &acme.invoice_id, 4_200, "usd"),
        t0_secs,
    );
    let (s, reply) = post_webhook(server.addr, &failed, WEBHOOK_SECRET, t0_secs).await;
    assert_eq!(
        (s, reply["outcome"].as_str()),
        (StatusCode::OK, Some("payment_failed")),
        "{reply}"
    );
    let t0 = wall_ms();

    // the due date is weeks past: the latest reminder step (7 days) is due; the retry is not
    // yet. The receiver answers 500 to the first delivery.
    let r = dunning::pass(&db, &cfg, Some(&stripe_api), t0 + 10_000)
        .await
        .unwrap();
    assert_eq!(
        (r.decided, r.delivered, r.failed_attempts),
        (1, 0, 1),
        "{r:?}"
    );
    assert!(r.without_url >= 1, "globex has no URL: {r:?}");
    // inside the backoff nothing is sent again
    assert_eq!(r.retries_sent, 0, "no retry before the first step");
    let r = dunning::pass(&db, &cfg, Some(&stripe_api), t0 + 30_000)
        .await
        .unwrap();
    assert_eq!(
        (r.decided, r.delivered, r.failed_attempts),
        (0, 0, 0),
        "{r:?}"
    );
    // an hour after the failure: the first retry is due; the reminder is delivered again
    let r = dunning::pass(&db, &cfg, Some(&stripe_api), t0 + 3_600_000 + 1_000)
        .await
        .unwrap();
    assert_eq!(
        (r.decided, r.delivered, r.failed_attempts),
        (1, 2, 0),
        "{r:?}"
    );
    assert_eq!(r.retries_sent, 1, "{r:?}");
    // nothing more until the next step
    let r = dunning::pass(&db, &cfg, Some(&stripe_api), t0 + 3_600_000 + 2_000)
        .await
        .unwrap();
    assert_eq!((r.decided, r.delivered, r.retries_sent), (0, 0, 0));

    // the retry asked Stripe to confirm the failed PaymentIntent again with its card
    let calls = stripe_got.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/v1/payment_intents/pi_d/confirm");
    assert_eq!(
        String::from_utf8_lossy(&calls[0].body),
        "payment_method=pm_card_visa&off_session=true"
    );
    assert_eq!(calls[0].authorization, "Bearer sk_test_dunning");
    assert_eq!(
        calls[0].idempotency_key,
        format!("tally-{}-retry-0", acme.invoice_id)
    );
    let logged: u64 = db
        .query(
            "SELECT count() FROM gateway_requests WHERE succeeded = 1 AND attempt = 1 \
             AND path = '/v1/payment_intents/pi_d/confirm' AND actor = 'payments:dunning'",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(logged, 1);

    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got.iter().map(|g| g.notification_id.as_str()).collect();
    let reminder = format!("invoice.overdue:{}:1", acme.invoice_id);
    let retry = format!("invoice.payment_retry:{}:0", acme.invoice_id);
    assert_eq!(ids[0], reminder);
    assert!(
        ids[1..].contains(&reminder.as_str()) && ids[1..].contains(&retry.as_str()),
        "{ids:?}"
    );
    let acme_secret = dunning::deliver::endpoint_secret(SIGNING, "acme");
    for g in &got {
        assert!(
            g.verifies(&acme_secret),
            "signed with acme's endpoint secret"
        );
        for other in [Secret::new("wrong"), Secret::new(SIGNING)] {
            assert!(!g.verifies(&other));
        }
        let body: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(body["data"]["invoice_id"], acme.invoice_id.as_str());
        assert_eq!(body["data"]["amount_due_minor"], 4_200);
        assert_eq!(body["data"]["customer"], "acme");
    }
    // the same notification is sent with the same body on every attempt
    assert_eq!(
        got[0].body,
        got.iter()
            .skip(1)
            .find(|g| g.notification_id == reminder)
            .unwrap()
            .body
    );
    let retry_body: serde_json::Value = serde_json::from_slice(
        &got.iter()
            .find(|g| g.notification_id == retry)
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(
        (
            retry_body["type"].as_str(),
            retry_body["data"]["retry_attempt"].as_u64()
        ),
        (Some("invoice.payment_retry"), Some(1))
    );

    // the delivery log, through the API
    let (s, log) = api(
        server.addr,
        "GET",
        "/v1/customers/acme/notifications",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let rows: Vec<(String, u64, u64, u64)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["notification_id"].as_str().unwrap().to_owned(),
                d["attempt"].as_u64().unwrap(),
                d["status_code"].as_u64().unwrap(),
                d["delivered"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0], (reminder.clone(), 1, 500, 0));
    assert!(
        rows.contains(&(reminder.clone(), 2, 200, 1)) && rows.contains(&(retry.clone(), 1, 200, 1)),
        "{rows:?}"
    );
    let (_, other) = api(
        server.addr,
        "GET",
        "/v1/customers/globex/notifications",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(other.as_array().map(Vec::len), Some(0));

    // paid: the second retry step passes without a notice
    let paid = stripe_event(
        "evt_paid",
        "payment_intent.succeeded",
        payment_intent("pi_d", &acme.invoice_id, 4_200, "usd"),
        wall_ms() / 1000,
    );
    assert_eq!(
        post_webhook(server.addr, &paid, WEBHOOK_SECRET, wall_ms() / 1000)
            .await
            .1["outcome"],
        "paid"
    );
    let r = dunning::pass(&db, &cfg, Some(&stripe_api), t0 + 30 * DAY_MS)
        .await
        .unwrap();
    assert_eq!((r.decided, r.delivered), (0, 0), "{r:?}");
    assert_eq!(received.lock().unwrap().len(), 3);
    let owed: Vec<String> = dunning::owed(&db)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.invoice_id)
        .collect();
    assert_eq!(owed, vec![globex.invoice_id.clone()]);

    assert_eq!(
        stripe_got.lock().unwrap().len(),
        1,
        "no retry for a paid invoice"
    );
    rx_stop.cancel();
    stripe_stop.cancel();
    drop(server);
    env.cleanup().await;
}
