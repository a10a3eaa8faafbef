//! Collection over the real ClickHouse and a local stand-in for Stripe's API: a finalized
//! invoice of a customer with a Stripe payment profile gets exactly one PaymentIntent (right
//! amount in minor units, currency, customer, payment method, idempotency key from the
//! invoice id), however many passes run, one after another or two at once; a bank-transfer
//! customer and a customer without a profile get no request; a signed
//! `payment_intent.succeeded` then pays the invoice and the ledger balances.

mod support;

use hyper::StatusCode;
use support::*;
use tally_domain::InvoiceStatus;
use tally_invoice::lifecycle;
use tally_payments::collect::{self, Policy};
use tally_payments::config::SecretString;
use tally_payments::dunning::retry::GatewayApi;
use tally_payments::gateway::stripe::Stripe;
use tally_payments::store;

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const POLICY: Policy = Policy {
    attempts_max: 3,
    backoff_secs: 60,
};

/// The form fields of a request (brackets are the only escapes these bodies use).
fn form(r: &Received) -> Vec<(String, String)> {
    let unescape = |s: &str| s.replace("%5B", "[").replace("%5D", "]").replace('+', " ");
    String::from_utf8_lossy(&r.body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect()
}

#[derive(clickhouse::Row, serde::Deserialize, Debug, PartialEq)]
struct Logged {
    idempotency_key: String,
    invoice_id: String,
    path: String,
    attempt: u32,
    status_code: u16,
    succeeded: u8,
    response_ref: String,
    actor: String,
}

async fn profile(server: &Server, customer: &str, body: serde_json::Value) -> StatusCode {
    api(
        server.addr,
        "PUT",
        &format!("/v1/customers/{customer}/payment-profile"),
        body,
    )
    .await
    .0
}

#[tokio::test]
async fn finalized_invoices_are_charged_once_and_settled_by_webhook() {
    let env = tally_platform::testkit::TestEnv::new("collection").await;
    let db = env.db();
    let server = start(db.clone(), wall_ms).await;
    let (stripe_addr, stripe_got, stripe_stop) = receiver(0).await;
    let stripe_api = GatewayApi {
        gateway: Box::new(Stripe::new(WEBHOOK_SECRET, 300)),
        base_url: format!("http://{stripe_addr}"),
        api_key: SecretString::new("sk_test_collect"),
        timeout: std::time::Duration::from_secs(5),
    };

    let acme = past_invoice(&db, "acme", "USD", &[("tokens", 4_200, 420)]).await;
    let tanaka = past_invoice(&db, "tanaka", "JPY", &[("tokens", 1_500, 150)]).await;
    let _globex = past_invoice(&db, "globex", "USD", &[("tokens", 900, 0)]).await;
    let _initech = past_invoice(&db, "initech", "USD", &[("tokens", 300, 0)]).await;
    assert_eq!(
        (acme.amount_due_minor, tanaka.amount_due_minor),
        (4_620, 1_650)
    );

    // payment profiles through the API: two cards, one bank transfer, one refused
    let card = |cus: &str, pm: &str| {
        serde_json::json!({"gateway": "stripe", "provider_customer": cus,
            "payment_method": pm})
    };
    assert_eq!(
        profile(&server, "acme", card("cus_acme", "pm_old")).await,
        StatusCode::OK
    );
    assert_eq!(
        profile(&server, "acme", card("cus_acme", "pm_acme")).await,
        StatusCode::OK
    );
    assert_eq!(
        profile(&server, "tanaka", card("cus_tanaka", "pm_tanaka")).await,
        StatusCode::OK
    );
    let manual = serde_json::json!({"gateway": "manual"});
    assert_eq!(profile(&server, "globex", manual).await, StatusCode::OK);
    let no_card = serde_json::json!({"gateway": "stripe", "provider_customer": "cus_x"});
    assert_eq!(
        profile(&server, "initech", no_card).await,
        StatusCode::BAD_REQUEST
    );
    let (s, p) = api(
        server.addr,
        "GET",
        "/v1/customers/acme/payment-profile",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(
        (s, p["payment_method"].as_str(), p["actor"].as_str()),
        (StatusCode::OK, Some("pm_acme"), Some("api:ops@example.com")),
        "{p}"
    );

    // two passes one after the other: one PaymentIntent per card customer's invoice
    let t0 = wall_ms();
    let r = collect::pass(&db, &stripe_api, POLICY, t0).await.unwrap();
    assert_eq!(
        (r.sent, r.failed, r.manual, r.without_profile),
        (2, 0, 1, 1),
        "{r:?}"
    );
    let r = collect::pass(&db, &stripe_api, POLICY, t0 + 1_000)
        .await
        .unwrap();
    assert_eq!((r.sent, r.failed), (0, 0), "a rerun sends nothing: {r:?}");

    // a second acme invoice, and two passes at once (as two instances would)
    let acme2 = invoice(
        &db,
        "acme",
        "USD",
        days_ago_ms(60),
        &[("tokens", 777, 0)],
        wall_ms(),
    )
    .await;
    let (a, b) = tokio::join!(
        collect::pass(&db, &stripe_api, POLICY, t0 + 2_000),
        collect::pass(&db, &stripe_api, POLICY, t0 + 2_000)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.sent + b.sent, 1, "{a:?} {b:?}");

    let got = stripe_got.lock().unwrap().clone();
    assert!(
        got.iter().all(|r| r.path == "/v1/payment_intents"),
        "only creations"
    );
    let created = payment_intents_created(&got);
    assert_eq!(
        created.len(),
        3,
        "one PaymentIntent per invoice: {created:?}"
    );
    for (inv, amount, currency, cus, pm) in [
        (&acme, "4620", "usd", "cus_acme", "pm_acme"),
        (&tanaka, "1650", "jpy", "cus_tanaka", "pm_tanaka"),
        (&acme2, "777", "usd", "cus_acme", "pm_acme"),
    ] {
        let key = format!("tally-{}-0", inv.invoice_id);
        let reqs: Vec<&Received> = got.iter().filter(|r| r.idempotency_key == key).collect();
        assert_eq!(reqs.len(), 1, "{key}: one request");
        let f = form(reqs[0]);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            (
                get("amount"),
                get("currency"),
                get("customer"),
                get("payment_method")
            ),
            (Some(amount), Some(currency), Some(cus), Some(pm)),
            "{f:?}"
        );
        assert_eq!(
            (get("confirm"), get("off_session")),
            (Some("true"), Some("true"))
        );
        assert_eq!(get("metadata[invoice_id]"), Some(inv.invoice_id.as_str()));
        assert_eq!(reqs[0].authorization, "Bearer sk_test_collect");
    }

    // the log: one row per request, 2xx, the PaymentIntent's id, the actor
    let logged: Vec<Logged> = db
        .query(
            "SELECT idempotency_key, invoice_id, path, attempt, status_code, succeeded, \
             response_ref, actor FROM gateway_requests ORDER BY at_ms, idempotency_key",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(logged.len(), 3, "{logged:?}");
    assert!(logged.iter().all(|l| l.path == "/v1/payment_intents"
        && l.attempt == 1
        && l.status_code == 200
        && l.succeeded == 1
        && l.response_ref.starts_with("pi_standin_")
        && l.actor == collect::ACTOR));
    let acme_pi = logged
        .iter()
        .find(|l| l.invoice_id == acme.invoice_id)
        .map(|l| l.response_ref.clone())
        .unwrap();

    // Stripe reports the charge: the invoice is paid and the ledger balances
    let now_secs = wall_ms() / 1000;
    let paid = stripe_event(
        "evt_collect_ok",
        "payment_intent.succeeded",
        payment_intent(&acme_pi, &acme.invoice_id, 4_620, "usd"),
        now_secs,
    );
    let (s, reply) = post_webhook(server.addr, &paid, WEBHOOK_SECRET, now_secs).await;
    assert_eq!(
        (s, reply["outcome"].as_str()),
        (StatusCode::OK, Some("paid")),
        "{reply}"
    );
    assert_eq!(
        lifecycle::status(&db, &acme.invoice_id).await.unwrap(),
        InvoiceStatus::Paid
    );
    let tb = store::trial_balance(&db).await.unwrap();
    assert!(tb.is_balanced(), "{}", tb.render());
    assert_eq!(tb.difference_minor("USD"), 0);

    // later passes leave paid and already charged invoices alone
    let r = collect::pass(&db, &stripe_api, POLICY, t0 + 600_000)
        .await
        .unwrap();
    assert_eq!((r.sent, r.failed), (0, 0), "{r:?}");
    assert_eq!(
        payment_intents_created(&stripe_got.lock().unwrap()).len(),
        3
    );

    stripe_stop.cancel();
    drop(server);
    env.cleanup().await;
}
