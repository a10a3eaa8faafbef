//! Stripe disputes posted as signed webhooks to the real endpoint over the real ClickHouse: a
//! dispute won and one lost, every webhook delivered twice (and a late `created` after the
//! close), with the dispute's states versioned (one row per state, never updated), the
//! ledger's holds, releases and losses, the invoice's lifecycle unmoved, and the trial
//! balance zero after every step.

mod support;

use hyper::StatusCode;
use serde_json::{json, Value};
use support::*;
use tally_domain::InvoiceStatus;
use tally_invoice::lifecycle;
use tally_payments::ledger::Account;
use tally_payments::store;
use tally_platform::testkit::TestEnv;

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn now_secs() -> i64 {
    wall_ms() / 1000
}

fn dispute(id: &str, pi: &str, amount: i64, currency: &str, status: &str) -> Value {
    json!({"id": id, "object": "dispute", "amount": amount, "currency": currency,
        "charge": format!("ch_{pi}"), "payment_intent": pi, "status": status,
        "reason": "fraudulent", "is_charge_refundable": false})
}

/// Posts the event twice: the first is applied with `outcome`, the second is a duplicate.
async fn twice(addr: std::net::SocketAddr, id: &str, kind: &str, object: Value, outcome: &str) {
    let body = stripe_event(id, kind, object, now_secs());
    let (status, reply) = post_webhook(addr, &body, WEBHOOK_SECRET, now_secs()).await;
    assert_eq!(
        (status, reply["outcome"].as_str(), &reply["duplicate"]),
        (StatusCode::OK, Some(outcome), &Value::Bool(false)),
        "{id}: {reply}"
    );
    let (status, reply) = post_webhook(addr, &body, WEBHOOK_SECRET, now_secs()).await;
    assert_eq!(
        (status, &reply["duplicate"]),
        (StatusCode::OK, &Value::Bool(true)),
        "{id} again: {reply}"
    );
}

/// The balance (debit − credit) of `account` in `currency`, and that every currency balances.
async fn balance(db: &clickhouse::Client, currency: &str, account: Account) -> i128 {
    let tb = store::trial_balance(db).await.expect("trial balance");
    assert!(tb.is_balanced(), "not balanced:\n{}", tb.render());
    tb.currencies
        .get(currency)
        .and_then(|a| a.get(&account))
        .map_or(0, |t| t.balance_minor())
}

async fn count(db: &clickhouse::Client, sql: &str) -> u64 {
    db.query(sql).fetch_one::<u64>().await.expect(sql)
}

/// (version, status) of each state of the invoice's only dispute, and its status, from the API.
async fn dispute_states(addr: std::net::SocketAddr, invoice: &str) -> (Vec<(u64, String)>, String) {
    let (status, body) = api(addr, "GET", &format!("/v1/invoices/{invoice}"), Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let disputes = body["disputes"].as_array().expect("disputes");
    assert_eq!(disputes.len(), 1, "{body}");
    let states = disputes[0]["states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|s| {
            (
                s["version"].as_u64().unwrap(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (states, disputes[0]["status"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_dispute_won_and_one_lost_move_the_ledger_once_and_keep_it_balanced() {
    let env = TestEnv::new("pay_disputes").await;
    let db = env.db();
    let usd = past_invoice(&db, "acme", "USD", &[("tokens", 1_000, 100)]).await;
    let jpy = past_invoice(&db, "kaisha", "JPY", &[("tokens", 5_000, 0)]).await;
    let server = start(db.clone(), wall_ms).await;
    let addr = server.addr;
    for (evt, pi, inv, amount, cur) in [
        ("evt_pay_usd", "pi_usd", &usd, 1_100, "usd"),
        ("evt_pay_jpy", "pi_jpy", &jpy, 5_000, "jpy"),
    ] {
        let body = stripe_event(
            evt,
            "payment_intent.succeeded",
            payment_intent(pi, &inv.invoice_id, amount, cur),
            now_secs(),
        );
        let (status, reply) = post_webhook(addr, &body, WEBHOOK_SECRET, now_secs()).await;
        assert_eq!(
            (status, reply["outcome"].as_str()),
            (StatusCode::OK, Some("paid"))
        );
    }
    assert_eq!(balance(&db, "USD", Account::Cash).await, 1_100);

    // won: 700 of the 1,100 USD disputed, held, then released
    let dp = |s| dispute("dp_won", "pi_usd", 700, "usd", s);
    twice(
        addr,
        "evt_w1",
        "charge.dispute.created",
        dp("needs_response"),
        "dispute_opened",
    )
    .await;
    assert_eq!(balance(&db, "USD", Account::Disputes).await, 700);
    assert_eq!(balance(&db, "USD", Account::Cash).await, 400);
    twice(
        addr,
        "evt_w2",
        "charge.dispute.funds_withdrawn",
        dp("needs_response"),
        "dispute_funds_withdrawn",
    )
    .await;
    assert_eq!(
        balance(&db, "USD", Account::Disputes).await,
        700,
        "held once"
    );
    twice(
        addr,
        "evt_w3",
        "charge.dispute.closed",
        dp("won"),
        "dispute_won",
    )
    .await;
    assert_eq!(balance(&db, "USD", Account::Disputes).await, 0);
    assert_eq!(balance(&db, "USD", Account::Cash).await, 1_100);
    assert_eq!(balance(&db, "USD", Account::DisputeLosses).await, 0);
    // the same close under another event id, and a late `created`, change nothing
    twice(
        addr,
        "evt_w4",
        "charge.dispute.closed",
        dp("won"),
        "dispute_already_closed",
    )
    .await;
    twice(
        addr,
        "evt_w5",
        "charge.dispute.created",
        dp("needs_response"),
        "dispute_already_closed",
    )
    .await;
    assert_eq!(balance(&db, "USD", Account::Cash).await, 1_100);
    let (states, status) = dispute_states(addr, &usd.invoice_id).await;
    assert_eq!(
        states,
        vec![
            (1, "needs_response".to_owned()),
            (2, "funds_withdrawn".to_owned()),
            (3, "won".to_owned())
        ]
    );
    assert_eq!(status, "won");

    // lost: the whole 5,000 JPY, held at creation, then a loss
    let dp = |s| dispute("dp_lost", "pi_jpy", 5_000, "jpy", s);
    twice(
        addr,
        "evt_l1",
        "charge.dispute.created",
        dp("needs_response"),
        "dispute_opened",
    )
    .await;
    assert_eq!(balance(&db, "JPY", Account::Cash).await, 0);
    twice(
        addr,
        "evt_l2",
        "charge.dispute.funds_withdrawn",
        dp("needs_response"),
        "dispute_funds_withdrawn",
    )
    .await;
    twice(
        addr,
        "evt_l3",
        "charge.dispute.closed",
        dp("lost"),
        "dispute_lost",
    )
    .await;
    assert_eq!(balance(&db, "JPY", Account::Disputes).await, 0);
    assert_eq!(balance(&db, "JPY", Account::DisputeLosses).await, 5_000);
    assert_eq!(balance(&db, "JPY", Account::Cash).await, 0);
    assert_eq!(balance(&db, "JPY", Account::Receivable).await, 0);
    twice(
        addr,
        "evt_l4",
        "charge.dispute.funds_reinstated",
        dp("lost"),
        "dispute_already_closed",
    )
    .await;
    assert_eq!(balance(&db, "JPY", Account::DisputeLosses).await, 5_000);
    let (states, status) = dispute_states(addr, &jpy.invoice_id).await;
    assert_eq!(
        states,
        vec![
            (1, "needs_response".to_owned()),
            (2, "funds_withdrawn".to_owned()),
            (3, "lost".to_owned())
        ]
    );
    assert_eq!(status, "lost");

    // each state one row, never updated; each journal once
    assert_eq!(count(&db, "SELECT count() FROM payment_disputes").await, 6);
    let journals: Vec<(String, String, i64, i64)> = db
        .query(
            "SELECT journal_id, account, debit_minor, credit_minor FROM v_ledger_entries \
             WHERE kind LIKE 'dispute%' ORDER BY journal_id, line_no",
        )
        .fetch_all()
        .await
        .unwrap();
    let j = |id: &str, a: &str, d: i64, c: i64| (id.to_owned(), a.to_owned(), d, c);
    assert_eq!(
        journals,
        vec![
            j("dsp:hold:dp_lost", "disputes", 5_000, 0),
            j("dsp:hold:dp_lost", "cash", 0, 5_000),
            j("dsp:hold:dp_won", "disputes", 700, 0),
            j("dsp:hold:dp_won", "cash", 0, 700),
            j("dsp:lost:dp_lost", "dispute_losses", 5_000, 0),
            j("dsp:lost:dp_lost", "disputes", 0, 5_000),
            j("dsp:release:dp_won", "cash", 700, 0),
            j("dsp:release:dp_won", "disputes", 0, 700),
        ]
    );
    assert_eq!(
        count(
            &db,
            "SELECT count() FROM ledger_entries WHERE kind LIKE 'dispute%'"
        )
        .await,
        8,
        "no journal appended twice"
    );
    // the lifecycle is not moved: both invoices stay paid (a lost dispute is money returned
    // to the card holder, not a reopened invoice)
    for inv in [&usd, &jpy] {
        assert_eq!(
            lifecycle::status(&db, &inv.invoice_id).await.unwrap(),
            InvoiceStatus::Paid
        );
    }
    // a dispute of a payment this service does not know books nothing
    let body = stripe_event(
        "evt_x",
        "charge.dispute.created",
        dispute("dp_x", "pi_unknown", 10, "usd", "needs_response"),
        now_secs(),
    );
    let (_, reply) = post_webhook(addr, &body, WEBHOOK_SECRET, now_secs()).await;
    assert_eq!(reply["outcome"], "dispute_of_unknown_payment");
    let (status, reply) = api(addr, "GET", "/v1/ledger/trial-balance", Value::Null).await;
    assert_eq!(
        (status, &reply["balanced"]),
        (StatusCode::OK, &Value::Bool(true))
    );
    assert_eq!(reply["difference_minor"], json!({"JPY": "0", "USD": "0"}));
    drop(server);
    env.cleanup().await;
}
