//! Prepaid credit wallets over the real ClickHouse and the payments API: a promotional grant
//! pays an open period's usage at once and the next period's with what is left; the first
//! period's invoice applies what the wallet reserved; voiding that invoice gives the credit
//! back; a grant expires, another is voided through the API; passes run again (a restart)
//! append nothing; every movement is a journal and the trial balance stays zero; a draft
//! invoice shows the credit applied and the balance left.

mod support;

use hyper::StatusCode;
use serde_json::json;
use support::*;
use tally_domain::InvoiceStatus;
use tally_invoice::lifecycle;
use tally_payments::ledger::Account;
use tally_payments::settle::Settler;
use tally_payments::store;
use tally_payments::wallet::pass;
use tally_platform::testkit::TestEnv;

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A charge of `customer` as the rater writes it (the latest version of its id counts).
async fn charge(
    db: &clickhouse::Client,
    id: &str,
    customer: &str,
    start_ms: i64,
    amount: i64,
    tax: i64,
    version: u64,
) {
    db.query(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, currency, \
         amount_minor, tax_minor, version) VALUES (?, ?, toDateTime(?), toDateTime(?), 'tokens', 'USD', ?, ?, ?)",
    )
    .bind(id)
    .bind(customer)
    .bind(start_ms / 1000)
    .bind((start_ms + 30 * DAY_MS) / 1000)
    .bind(amount)
    .bind(tax)
    .bind(version)
    .execute()
    .await
    .expect("charge written");
}

async fn wallet(server: &Server, customer: &str) -> serde_json::Value {
    let (status, body) = api(
        server.addr,
        "GET",
        &format!("/v1/customers/{customer}/wallet"),
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn balance(tb: &tally_payments::ledger::TrialBalance, account: Account) -> i128 {
    tb.currencies
        .get("USD")
        .and_then(|a| a.get(&account))
        .map_or(0, |t| t.balance_minor())
}

/// The customer's `customer_credit` lines, credit minus debit: what the ledger says it holds.
async fn ledger_credit(db: &clickhouse::Client, customer: &str) -> i64 {
    db.query(
        "SELECT toInt64(sum(credit_minor)) - toInt64(sum(debit_minor)) FROM v_ledger_entries \
         WHERE customer = ? AND account = 'customer_credit'",
    )
    .bind(customer)
    .fetch_one()
    .await
    .expect("ledger read")
}

#[tokio::test]
async fn wallets_consume_usage_expire_void_and_keep_the_ledger_balanced() {
    let env = TestEnv::new("wallet").await;
    let db = env.db();
    let server = start(db.clone(), wall_ms).await;
    let (p1, p2) = (days_ago_ms(40), days_ago_ms(10));
    // period 1 (ended, not invoiced yet) used 700 so far
    charge(&db, "c1", "acme", p1, 600, 0, 1).await;
    charge(&db, "c1", "acme", p1, 700, 0, 2).await;

    // a promotional grant pays the open usage before the answer
    let (status, body) = api(
        server.addr,
        "POST",
        "/v1/customers/acme/wallet/grants",
        json!({"grant_id": "promo-1", "currency": "USD", "amount_minor": 1000, "reason": "welcome"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let w = wallet(&server, "acme").await;
    assert_eq!(w["balances"]["USD"], 300, "{w}");
    assert_eq!(w["grants"][0]["remaining_minor"], 300);
    assert_eq!(w["grants"][0]["status"], "active");
    assert_eq!(w["grants"][0]["actor"], format!("api:{OPERATOR}"));
    // the same grant id again is the same grant
    let (status, body) = api(
        server.addr,
        "POST",
        "/v1/customers/acme/wallet/grants",
        json!({"grant_id": "promo-1", "currency": "USD", "amount_minor": 1000}),
    )
    .await;
    assert_eq!(
        (status, body["created"].clone()),
        (StatusCode::OK, json!(false))
    );
    // bad requests name the field
    let (status, body) = api(
        server.addr,
        "POST",
        "/v1/customers/acme/wallet/grants",
        json!({"grant_id": "x", "currency": "USD", "amount_minor": -5}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().contains("amount_minor"),
        "{body}"
    );

    // The passes' clock starts after the grant (the API stamps it with the wall clock): a
    // pass at `now + 1_000` must see it even when the calls above took longer than a second.
    let now = wall_ms();
    // period 2's usage takes the rest: the grant is used across two periods
    charge(&db, "c2", "acme", p2, 450, 50, 1).await;
    let r = pass::run(&db, now + 1_000).await.unwrap();
    assert_eq!((r.customers, r.movements, r.failed), (1, 1, 0), "{r:?}");
    assert_eq!(wallet(&server, "acme").await["balances"]["USD"], 0);
    // run again, as after a restart: nothing new
    let r = pass::run(&db, now + 2_000).await.unwrap();
    assert_eq!((r.movements, r.journals), (0, 0), "{r:?}");

    // period 1's invoice is finalized applying what the wallet reserved for it
    let inv = invoice_with_credit(
        &db,
        "acme",
        "USD",
        p1,
        &[("tokens", 700, 0)],
        700,
        now + 3_000,
    )
    .await;
    assert_eq!((inv.credits_applied_minor, inv.amount_due_minor), (700, 0));
    let settler = Settler::new(db.clone());
    settler.sync_ledger(now + 4_000).await.unwrap();
    let r = pass::run(&db, now + 5_000).await.unwrap();
    assert_eq!(r.movements, 1, "the invoiced movement");
    let tb = store::trial_balance(&db).await.unwrap();
    assert!(tb.is_balanced(), "{}", tb.render());
    assert_eq!(
        balance(&tb, Account::CreditReserved),
        -300,
        "period 2 still open"
    );
    assert_eq!(balance(&tb, Account::Receivable), 0);
    assert_eq!(ledger_credit(&db, "acme").await, 0);

    // voiding period 1's invoice gives its 700 back: period 2 takes 200 more of it
    lifecycle::record(
        &db,
        &inv.invoice_id,
        InvoiceStatus::Void,
        "api:carol",
        "billed in error",
        now,
    )
    .await
    .unwrap();
    settler.sync_ledger(now + 6_000).await.unwrap();
    pass::run(&db, now + 7_000).await.unwrap();
    let w = wallet(&server, "acme").await;
    assert_eq!(w["balances"]["USD"], 500, "{w}");
    let kinds: Vec<&str> = w["movements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["consume", "restore", "invoiced", "consume", "consume", "grant"],
        "newest first"
    );
    assert_eq!(
        ledger_credit(&db, "acme").await,
        500,
        "the balance is the sum of its ledger entries"
    );
    let tb = store::trial_balance(&db).await.unwrap();
    assert!(tb.is_balanced(), "{}", tb.render());
    assert_eq!(balance(&tb, Account::CreditReserved), -500);

    // usage recomputed lower releases credit back
    charge(&db, "c2", "acme", p2, 250, 50, 2).await;
    pass::run(&db, now + 8_000).await.unwrap();
    assert_eq!(wallet(&server, "acme").await["balances"]["USD"], 700);
    assert_eq!(ledger_credit(&db, "acme").await, 700);

    // the invoicer's draft of period 2 applies the wallet's reservation and shows the rest
    // (the voided period's 700 come back as an adjustment line, which the wallet did not
    // reserve for: it is owed)
    let cfg = tally_invoicer::config::InvoicerConfig {
        lookback_secs: 5 * 86_400,
        grace_secs: 86_400,
        ..Default::default()
    };
    let drafts = tally_invoicer::run::invoice_pass(&db, None, &cfg, now + 9_000)
        .await
        .unwrap();
    let draft = drafts
        .iter()
        .find(|i| i.customer == "acme")
        .expect("draft of period 2");
    assert_eq!(
        (
            draft.total_minor,
            draft.credits_applied_minor,
            draft.amount_due_minor,
            draft.credit_balance_minor
        ),
        (1_000, 300, 700, Some(700)),
        "{:?}",
        draft
            .lines
            .iter()
            .map(|l| (&l.charge_id, l.amount_minor, l.tax_minor))
            .collect::<Vec<_>>()
    );
    let html = tally_invoice::render::html(draft);
    assert!(html.contains("Prepaid credit remaining"), "{html}");

    // beta: a grant with an expiry pays 30, the rest expires (breakage), with its journal
    charge(&db, "c3", "beta", p2, 30, 0, 1).await;
    let (status, _) = api(
        server.addr,
        "POST",
        "/v1/customers/beta/wallet/grants",
        json!({"grant_id": "trial", "currency": "USD", "amount_minor": 100, "priority": 0,
               "expires_at_ms": now + DAY_MS}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    pass::run(&db, now + 2 * DAY_MS).await.unwrap();
    let w = wallet(&server, "beta").await;
    assert_eq!(
        (
            w["balances"]["USD"].clone(),
            w["grants"][0]["status"].clone()
        ),
        (json!(0), json!("expired")),
        "{w}"
    );
    let tb = store::trial_balance(&db).await.unwrap();
    assert_eq!(balance(&tb, Account::CreditBreakage), -70);

    // gamma: a grant voided through the API; an unknown grant is 404
    let (status, _) = api(
        server.addr,
        "POST",
        "/v1/customers/gamma/wallet/grants",
        json!({"grant_id": "oops", "currency": "USD", "amount_minor": 250}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, w) = api(
        server.addr,
        "POST",
        "/v1/customers/gamma/wallet/grants/oops/void",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{w}");
    assert_eq!(
        (
            w["balances"]["USD"].clone(),
            w["grants"][0]["status"].clone()
        ),
        (json!(0), json!("voided"))
    );
    let (status, _) = api(
        server.addr,
        "POST",
        "/v1/customers/gamma/wallet/grants/nope/void",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // a top-up is pending until paid
    let (status, body) = api(
        server.addr,
        "POST",
        "/v1/customers/gamma/wallet/top-ups",
        json!({"grant_id": "t1", "currency": "USD", "amount_minor": 5000}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["payable_id"], "topup_gamma_t1");
    let w = wallet(&server, "gamma").await;
    let t1 = w["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["grant_id"] == "t1")
        .unwrap()
        .clone();
    assert_eq!(
        (t1["status"].clone(), w["balances"]["USD"].clone()),
        (json!("pending"), json!(0))
    );
    // paid by bank transfer under its payable id: available on the next pass, as cash
    let (status, body) = api(
        server.addr,
        "POST",
        "/v1/payments",
        json!({"invoice_id": "topup_gamma_t1", "amount_minor": 5000, "currency": "USD", "reference": "BANK-T1"}),
    )
    .await;
    assert_eq!(
        (status, body["outcome"].clone()),
        (StatusCode::OK, json!("top_up_paid")),
        "{body}"
    );
    pass::run(&db, now + 2 * DAY_MS + 1).await.unwrap();
    let w = wallet(&server, "gamma").await;
    assert_eq!(w["balances"]["USD"], 5000, "{w}");
    let tb = store::trial_balance(&db).await.unwrap();
    assert_eq!(
        balance(&tb, Account::Cash),
        5000,
        "the top-up's money is cash"
    );

    // a reader may look, not grant
    let reader = token(&db, "rita", tally_platform::auth::Role::Reader).await;
    let (status, _) = api_as(
        server.addr,
        Some(&reader),
        "GET",
        "/v1/customers/acme/wallet",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api_as(
        server.addr,
        Some(&reader),
        "POST",
        "/v1/customers/acme/wallet/grants",
        json!({"grant_id": "free", "currency": "USD", "amount_minor": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // everything once, everything balanced
    let r = pass::run(&db, now + 3 * DAY_MS).await.unwrap();
    assert_eq!((r.movements, r.journals, r.failed), (0, 0, 0), "{r:?}");
    let tb = store::trial_balance(&db).await.unwrap();
    assert!(tb.is_balanced(), "{}", tb.render());
    for c in ["acme", "beta", "gamma"] {
        let w = wallet(&server, c).await;
        let b = w["balances"]["USD"].as_i64().unwrap_or(0);
        assert_eq!(ledger_credit(&db, c).await, b, "{c}: wallet = ledger");
    }
    drop(server);
    env.cleanup().await;
}

/// A charge of `customer` in `currency` whose usage starts `usage_from_ms`.
async fn charge_in(
    db: &clickhouse::Client,
    id: &str,
    customer: &str,
    start_ms: i64,
    currency: &str,
    amount: i64,
    usage_from_ms: i64,
) {
    db.query(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, usage_from, meter, \
         currency, amount_minor, tax_minor, version) \
         VALUES (?, ?, toDateTime(?), toDateTime(?), toDateTime(?), 'tokens', ?, ?, 0, 1)",
    )
    .bind(id)
    .bind(customer)
    .bind(start_ms / 1000)
    .bind((start_ms + 30 * DAY_MS) / 1000)
    .bind(usage_from_ms / 1000)
    .bind(currency)
    .bind(amount)
    .execute()
    .await
    .expect("charge written");
}

fn balance_in(tb: &tally_payments::ledger::TrialBalance, currency: &str, account: Account) -> i128 {
    tb.currencies
        .get(currency)
        .and_then(|a| a.get(&account))
        .map_or(0, |t| t.balance_minor())
}

/// A period with usage in two currencies (a plan change from USD to EUR inside it) has one
/// invoice per currency (`currency_split`): the wallet reserves each currency's usage for its
/// own invoice id, and each invoice applies only its own currency's wallet credit.
#[tokio::test]
async fn a_period_in_two_currencies_gets_each_currencys_wallet_credit() {
    let env = TestEnv::new("wallet_two_currencies").await;
    let db = env.db();
    let server = start(db.clone(), wall_ms).await;
    let p = days_ago_ms(10);
    // USD billed first (the home currency: the plain id), EUR after the change
    charge_in(&db, "u1", "duo", p, "USD", 600, p + DAY_MS).await;
    charge_in(&db, "e1", "duo", p, "EUR", 400, p + 5 * DAY_MS).await;
    for (grant, currency, amount) in [("g-usd", "USD", 1000), ("g-eur", "EUR", 300)] {
        let (status, body) = api(
            server.addr,
            "POST",
            "/v1/customers/duo/wallet/grants",
            json!({"grant_id": grant, "currency": currency, "amount_minor": amount}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // after the grants, which the API stamps with the wall clock
    let now = wall_ms();
    pass::run(&db, now + 1_000).await.unwrap();
    let w = wallet(&server, "duo").await;
    // USD: 1000 - 600 = 400 left; EUR: 300 all taken by 400 of usage
    assert_eq!(
        (w["balances"]["USD"].clone(), w["balances"]["EUR"].clone()),
        (json!(400), json!(0)),
        "{w}"
    );
    let usd_id = tally_invoice::invoice::invoice_id("duo", p);
    let eur_id = tally_invoice::currency_split::invoice_id_in("duo", p, "EUR");
    let duo = tally_domain::CustomerId::new("duo").unwrap();
    let reserved = tally_invoicer::store::wallet_credit(&db, std::slice::from_ref(&duo))
        .await
        .unwrap()
        .reserved;
    assert_eq!(
        reserved
            .iter()
            .flat_map(|(i, by)| by.iter().map(move |(c, r)| (i.as_str(), c.code(), *r)))
            .filter(|(_, _, r)| *r != 0)
            .collect::<std::collections::BTreeSet<_>>(),
        [(usd_id.as_str(), "USD", 600), (eur_id.as_str(), "EUR", 300)]
            .into_iter()
            .collect(),
        "each currency reserved for its own invoice"
    );

    let cfg = tally_invoicer::config::InvoicerConfig {
        lookback_secs: 5 * 86_400,
        grace_secs: 86_400,
        ..Default::default()
    };
    let drafts = tally_invoicer::run::invoice_pass(&db, None, &cfg, now + 2_000)
        .await
        .unwrap();
    let mut got: Vec<_> = drafts
        .iter()
        .filter(|i| i.customer == "duo")
        .map(|i| {
            (
                i.invoice_id.clone(),
                i.currency.to_string(),
                i.total_minor,
                i.credits_applied_minor,
                i.amount_due_minor,
                i.credit_balance_minor,
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (usd_id.clone(), "USD".to_owned(), 600, 600, 0, Some(400)),
        (eur_id.clone(), "EUR".to_owned(), 400, 300, 100, Some(0)),
    ];
    want.sort();
    assert_eq!(got, want);

    Settler::new(db.clone())
        .sync_ledger(now + 3_000)
        .await
        .unwrap();
    let tb = store::trial_balance(&db).await.unwrap();
    assert!(tb.is_balanced(), "{}", tb.render());
    assert_eq!(balance_in(&tb, "USD", Account::CreditReserved), -600);
    assert_eq!(balance_in(&tb, "EUR", Account::CreditReserved), -300);
}

/// Stored wallet rows that do not validate (a grant in a currency this product does not know,
/// a grant of a customer id that is not one, a movement in an unknown currency) fail only
/// their customer's wallet pass: that wallet is not decided without them (leaving one out
/// could spend its credit twice), and every other customer's wallet goes on. The API refuses
/// a path that names no customer id. On the old code the rows were taken as they were: the
/// pass counted no failure and posted journals in `XX1`.
#[tokio::test]
async fn a_bad_stored_wallet_row_fails_only_its_customers_pass() {
    let env = TestEnv::new("wallet_bad_rows").await;
    let db = env.db();
    let server = start(db.clone(), wall_ms).await;
    let now = wall_ms();
    let grant = |id: &str, customer: &str, currency: &str| {
        let (db, id, customer, currency) = (
            db.clone(),
            id.to_owned(),
            customer.to_owned(),
            currency.to_owned(),
        );
        async move {
            db.query(
                "INSERT INTO wallet_grants (grant_id, customer, currency, amount_minor, kind, \
                 priority, expires_at_ms, reason, actor, created_at_ms, created_at) \
                 VALUES (?, ?, ?, 500, 'promotional', 50, 0, '', 'test', ?, toDateTime(?))",
            )
            .bind(&id)
            .bind(&customer)
            .bind(&currency)
            .bind(now - 1_000)
            .bind((now - 1_000) / 1000)
            .execute()
            .await
            .expect("grant written");
        }
    };
    grant("g-ok", "good", "USD").await;
    grant("g-bad", "bad-currency", "XX1").await;
    grant("g-id", "bad.id", "USD").await;
    grant("g-mv", "bad-movement", "USD").await;
    db.query(
        "INSERT INTO wallet_movements (movement_id, customer, grant_id, currency, kind, \
         amount_minor, invoice_id, actor, at_ms, at) \
         VALUES ('grant:g-mv', 'bad-movement', 'g-mv', 'XX1', 'grant', 500, '', 'test', ?, toDateTime(?))",
    )
    .bind(now - 500)
    .bind((now - 500) / 1000)
    .execute()
    .await
    .expect("movement written");

    let r = pass::run(&db, now).await.unwrap();
    assert_eq!(
        (r.customers, r.movements, r.journals, r.failed),
        (4, 1, 1, 3),
        "only good's grant arrives: {r:?}"
    );
    assert_eq!(wallet(&server, "good").await["balances"]["USD"], 500);
    assert_eq!(ledger_credit(&db, "good").await, 500);
    for c in ["bad-currency", "bad-movement", "bad.id"] {
        assert_eq!(ledger_credit(&db, c).await, 0, "{c}: nothing posted");
    }
    let journals: u64 = db
        .query("SELECT count() FROM ledger_entries WHERE currency = 'XX1'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(journals, 0, "no journal in an unknown currency");
    // the API: a stored row that does not validate is the service's fault (500, in its log);
    // a path that names no customer id is the caller's (400)
    let (status, body) = api(
        server.addr,
        "GET",
        "/v1/customers/bad-currency/wallet",
        serde_json::Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let (status, body) = api(
        server.addr,
        "POST",
        "/v1/customers/bad.id/wallet/grants",
        json!({"grant_id": "g2", "currency": "USD", "amount_minor": 100}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "bad_request", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("customer"),
        "{body}"
    );
    drop(server);
    env.cleanup().await;
}
