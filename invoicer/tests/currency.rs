//! A change to a plan in another currency inside a period, over the real servers (ClickHouse
//! and NATS KV, each test in its own database and bucket): the period gets one invoice per
//! currency, each numbered and finalized, while another customer's invoice is finalized in
//! the same pass and a customer whose invoice cannot be built is left for the next pass
//! without stopping anyone. Ids stay stable from pass to pass, late usage of the second
//! currency adjusts that currency's next invoice, and a rerun writes nothing new.
//!
//! Golden amounts by hand, in minor units, as the rater charges them: November 2026 (30
//! days), `acme` on `basic-usd` (flat 30.00 USD) until November 11, then on `pro-eur` (flat
//! 60.00 EUR):
//! - USD part (10/30): fee 30.00 x 1/3 = 10.00 -> 1000; 1,500 tokens at 0.01 = 15.00 -> 1500;
//!   the USD invoice: 1000 + 1500 = 2500;
//! - EUR part (20/30): fee 60.00 x 2/3 = 40.00 -> 4000; 200 tokens at 0.02 = 4.00 -> 400, tax
//!   19 % = 0.76 -> 76; the EUR invoice: net 4400, tax 76, total 4476.
//! - `globex` (USD, one currency): 2500.

use std::collections::BTreeMap;

use tally_invoicer::currency_split::invoice_id_in;
use tally_invoicer::invoice::invoice_id;
use tally_invoicer::numbering::Numbers;
use tally_invoicer::{invoice_pass, InvoicerConfig, Status};
use tally_platform::testkit::TestEnv;

const DAY: i64 = 86_400;
const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z
const NOV_11: i64 = NOV_1 + 10 * DAY;
const DEC_1: i64 = 1_796_083_200;
const JAN_1: i64 = 1_798_761_600;

/// A charge row as the rater writes it.
struct Charge<'a> {
    id: &'a str,
    customer: &'a str,
    start: i64,
    end: i64,
    meter: &'a str,
    plan: &'a str,
    model: &'a str,
    currency: &'a str,
    quantity: &'a str,
    amount: i64,
    tax_rate: &'a str,
    tax: i64,
    usage_from: i64,
    version: u64,
}

fn charge<'a>(id: &'a str, customer: &'a str, currency: &'a str, amount: i64) -> Charge<'a> {
    Charge {
        id,
        customer,
        start: NOV_1,
        end: DEC_1,
        meter: "tokens",
        plan: "p",
        model: "per_unit",
        currency,
        quantity: "0",
        amount,
        tax_rate: "",
        tax: 0,
        usage_from: NOV_1,
        version: 1,
    }
}

async fn insert(db: &clickhouse::Client, rows: &[Charge<'_>]) {
    let values: Vec<String> = rows
        .iter()
        .map(|c| {
            format!(
                "('{id}', '{customer}', toDateTime({start}), toDateTime({end}), '{meter}', '{{}}', '{plan}', 1, \
                 '{model}', '{currency}', toDecimal128('{q}', 9), '', '[]', {a}, {a}, '{rate}', {tax}, 1, \
                 toDateTime({from}), toDateTime({from}), now(), {version})",
                id = c.id,
                customer = c.customer,
                start = c.start,
                end = c.end,
                meter = c.meter,
                plan = c.plan,
                model = c.model,
                currency = c.currency,
                q = c.quantity,
                a = c.amount,
                rate = c.tax_rate,
                tax = c.tax,
                from = c.usage_from,
                version = c.version,
            )
        })
        .collect();
    db.query(&format!(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, group_key, plan_id, plan_version, \
         price_model, currency, quantity, unit_price, tiers, amount_minor, amount_before_discounts_minor, tax_rate, \
         tax_minor, windows, usage_from, usage_to, computed_at, version) VALUES {}",
        values.join(", ")
    ))
    .execute()
    .await
    .expect("insert charges");
}

fn cfg() -> InvoicerConfig {
    InvoicerConfig {
        grace_secs: DAY as u64,
        ..InvoicerConfig::default()
    }
}

async fn kv(env: &TestEnv) -> (Numbers, String) {
    let bucket = format!("N{}", env.nats.stream);
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    (
        Numbers::open(client, &bucket).await.expect("bucket"),
        bucket,
    )
}

async fn drop_bucket(env: &TestEnv, bucket: &str) {
    if let Ok(client) = async_nats::connect(&env.nats.url).await {
        let _ = async_nats::jetstream::new(client)
            .delete_key_value(bucket)
            .await;
    }
}

#[derive(Debug, PartialEq, Eq, serde::Deserialize, clickhouse::Row)]
struct Stored {
    invoice_id: String,
    customer: String,
    status: String,
    currency: String,
    number: String,
    total_minor: i64,
}

async fn stored(db: &clickhouse::Client) -> Vec<Stored> {
    db.query(
        "SELECT invoice_id, customer, status, currency, number, total_minor FROM v_invoices \
         ORDER BY customer, period_start, currency",
    )
    .fetch_all()
    .await
    .expect("v_invoices")
}

#[tokio::test]
async fn a_currency_change_mid_period_gives_one_invoice_per_currency_and_stops_no_one() {
    let env = TestEnv::new("invoicer_currency").await;
    let db = env.db();
    let (numbers, bucket) = kv(&env).await;
    let cfg = cfg();
    // November 5th: only the USD part has begun; its invoice is a draft under the plain id
    let mut usd_fee = charge("chg_acme_fee_usd", "acme", "USD", 1000);
    usd_fee.model = "flat";
    usd_fee.plan = "basic-usd";
    usd_fee.meter = "seats";
    let mut usd_tokens = charge("chg_acme_tok_usd", "acme", "USD", 1500);
    usd_tokens.plan = "basic-usd";
    usd_tokens.quantity = "1500";
    usd_tokens.usage_from = NOV_1 + 2 * DAY;
    insert(&db, &[usd_fee, usd_tokens]).await;
    let early = invoice_pass(&db, Some(&numbers), &cfg, (NOV_1 + 4 * DAY) * 1000)
        .await
        .expect("pass");
    let plain = invoice_id("acme", NOV_1 * 1000);
    let euro = invoice_id_in("acme", NOV_1 * 1000, "EUR");
    assert_eq!(early.len(), 1);
    assert_eq!(
        (
            early[0].invoice_id.as_str(),
            early[0].status,
            early[0].total_minor
        ),
        (plain.as_str(), Status::Draft, 2500)
    );

    // the change to pro-eur on November 11th: its fee from then on and its usage; globex in
    // USD; a customer whose charge names no currency the invoicer knows
    let mut eur_fee = charge("chg_acme_fee_eur", "acme", "EUR", 4000);
    eur_fee.model = "flat";
    eur_fee.plan = "pro-eur";
    eur_fee.meter = "seats";
    eur_fee.usage_from = NOV_11;
    let mut eur_tokens = charge("chg_acme_tok_eur", "acme", "EUR", 400);
    eur_tokens.plan = "pro-eur";
    eur_tokens.quantity = "200";
    eur_tokens.tax_rate = "19";
    eur_tokens.tax = 76;
    eur_tokens.usage_from = NOV_11 + DAY;
    let globex = charge("chg_globex", "globex", "USD", 2500);
    let broken = charge("chg_broken", "broken", "ZZZ", 700);
    // and a charge whose customer id does not validate (a `.` is no id character)
    let bad_id = charge("chg_bad_id", "bad.id", "USD", 900);
    insert(&db, &[eur_fee, eur_tokens, globex, broken, bad_id]).await;

    // December 3rd: November ended and its grace passed
    let now = (DEC_1 + 2 * DAY) * 1000;
    let done = invoice_pass(&db, Some(&numbers), &cfg, now)
        .await
        .expect("one customer's bad charge never fails the pass");
    let got: Vec<(&str, &str, Status, i64, i64, i64)> = done
        .iter()
        .map(|i| {
            (
                i.customer.as_str(),
                i.currency.code(),
                i.status,
                i.net_minor,
                i.tax_minor,
                i.total_minor,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("acme", "EUR", Status::Finalized, 4400, 76, 4476),
            ("acme", "USD", Status::Finalized, 2500, 0, 2500),
            ("globex", "USD", Status::Finalized, 2500, 0, 2500),
        ],
        "broken and bad.id are left out; everyone else is finalized"
    );
    let by_currency: BTreeMap<&str, &tally_invoicer::Invoice> = done
        .iter()
        .filter(|i| i.customer == "acme")
        .map(|i| (i.currency.code(), i))
        .collect();
    assert_eq!(
        by_currency["USD"].invoice_id, plain,
        "the first currency keeps the id"
    );
    assert_eq!(by_currency["EUR"].invoice_id, euro);
    for inv in by_currency.values() {
        assert_eq!(inv.period.start_ms, NOV_1 * 1000);
        assert!(inv
            .lines
            .iter()
            .all(|l| inv.currency == "EUR" || l.plan_id == "basic-usd"));
        assert!(inv
            .lines
            .iter()
            .all(|l| inv.currency == "USD" || l.plan_id == "pro-eur"));
    }
    // numbers in period-end, customer, currency order: gapless, one each
    let numbers_given: Vec<(&str, &str)> = done
        .iter()
        .map(|i| (i.invoice_id.as_str(), i.number.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        numbers_given,
        vec![
            (euro.as_str(), "INV-000001"),
            (plain.as_str(), "INV-000002"),
            (invoice_id("globex", NOV_1 * 1000).as_str(), "INV-000003"),
        ]
    );
    let after = stored(&db).await;
    assert_eq!(
        after.len(),
        3,
        "no invoice for broken or bad.id, no stray draft"
    );
    assert!(after.iter().all(|s| s.status == "finalized"));
    // reconciliation matches each invoice with its currency's charges
    let report = tally_invoicer::reconcile::run(&db, (NOV_1 - DAY) * 1000)
        .await
        .expect("reconcile");
    assert_eq!(report.difference_minor, 0, "{:?}", report.money_differences);
    assert!(
        report.money_differences.is_empty(),
        "{:?}",
        report.money_differences
    );

    // a rerun writes nothing new: every invoice is finalized, broken still fails
    let rerun = invoice_pass(&db, Some(&numbers), &cfg, now + 60_000)
        .await
        .expect("rerun");
    assert!(rerun.is_empty(), "{rerun:?}");
    assert_eq!(stored(&db).await, after);

    // broken's charge is corrected upstream (a new version in USD): the next pass finalizes
    // it with the next number
    let mut fixed = charge("chg_broken", "broken", "USD", 700);
    fixed.version = 2;
    insert(&db, &[fixed]).await;
    let retried = invoice_pass(&db, Some(&numbers), &cfg, now + 120_000)
        .await
        .expect("retry");
    assert_eq!(retried.len(), 1);
    assert_eq!(
        (
            retried[0].customer.as_str(),
            retried[0].number.as_deref(),
            retried[0].total_minor
        ),
        ("broken", Some("INV-000004"), 700)
    );

    // late EUR usage of November after finalization: the EUR charge rises by 500; December
    // (EUR only) carries the adjustment against the EUR invoice; USD is untouched
    let mut late = charge("chg_acme_tok_eur", "acme", "EUR", 900);
    late.plan = "pro-eur";
    late.quantity = "450";
    late.tax_rate = "19";
    late.tax = 171;
    late.usage_from = NOV_11 + DAY;
    late.version = 2;
    let mut december = charge("chg_acme_dec", "acme", "EUR", 6000);
    december.start = DEC_1;
    december.end = JAN_1;
    december.plan = "pro-eur";
    december.model = "flat";
    december.meter = "seats";
    december.usage_from = DEC_1;
    insert(&db, &[late, december]).await;
    let dec = invoice_pass(&db, Some(&numbers), &cfg, (DEC_1 + 9 * DAY) * 1000)
        .await
        .expect("December pass");
    let acme_dec: Vec<&tally_invoicer::Invoice> =
        dec.iter().filter(|i| i.customer == "acme").collect();
    assert_eq!(acme_dec.len(), 1);
    let d = acme_dec[0];
    assert_eq!(d.invoice_id, invoice_id("acme", DEC_1 * 1000));
    let adj: Vec<(Option<&str>, i64, i64)> = d
        .lines
        .iter()
        .filter(|l| l.kind == tally_invoicer::invoice::LineKind::Adjustment)
        .map(|l| (l.adjusts_invoice_id.as_deref(), l.amount_minor, l.tax_minor))
        .collect();
    assert_eq!(
        adj,
        vec![(Some(euro.as_str()), 500, 95)],
        "900 - 400, tax 171 - 76"
    );
    assert_eq!(d.total_minor, 6000 + 500 + 95);
    drop_bucket(&env, &bucket).await;
    env.cleanup().await;
}

/// A period whose first invoice was built in the later currency (the earlier part's usage
/// arrived late) keeps that invoice's id for it: an id never changes currency, so no draft is
/// left behind under an id that moved.
#[tokio::test]
async fn an_invoice_id_never_changes_currency_once_written() {
    let env = TestEnv::new("invoicer_currency_ids").await;
    let db = env.db();
    let cfg = cfg();
    let mut eur = charge("chg_eur", "flip", "EUR", 4000);
    eur.usage_from = NOV_11;
    insert(&db, &[eur]).await;
    let first = tally_invoicer::invoice_once(&db, &cfg, (NOV_11 + 5 * DAY) * 1000)
        .await
        .expect("pass");
    let plain = invoice_id("flip", NOV_1 * 1000);
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].invoice_id.as_str(), first[0].currency.code()),
        (plain.as_str(), "EUR")
    );
    // the USD part's usage (November 3rd, earlier than any EUR usage) lands later
    let mut usd = charge("chg_usd", "flip", "USD", 1234);
    usd.usage_from = NOV_1 + 2 * DAY;
    insert(&db, &[usd]).await;
    let second = tally_invoicer::invoice_once(&db, &cfg, (NOV_11 + 6 * DAY) * 1000)
        .await
        .expect("pass");
    let got: Vec<(&str, &str, i64)> = second
        .iter()
        .map(|i| (i.invoice_id.as_str(), i.currency.code(), i.total_minor))
        .collect();
    let usd_id = invoice_id_in("flip", NOV_1 * 1000, "USD");
    let mut want = vec![
        (plain.as_str(), "EUR", 4000),
        (usd_id.as_str(), "USD", 1234),
    ];
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want);
    let all = stored(&db).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|s| s.status == "draft"));
    env.cleanup().await;
}

/// An annual fee and the first month's usage start together (an annual plan with monthly
/// usage): one invoice, whose period is the shortest (November), so it is finalized and
/// numbered one grace after November with both lines (2800 + 120000), whatever order the
/// charges are read in; a year later, with November's charge out of the lookback, the fee's
/// charge alone changes nothing (its invoice is final). Before, the invoice took its period
/// from whichever charge was read first: November's usage could wait a year.
#[tokio::test]
async fn charges_of_one_start_and_different_ends_are_invoiced_with_the_shortest_period() {
    let env = TestEnv::new("invoicer_periods").await;
    let db = env.db();
    let (numbers, bucket) = kv(&env).await;
    const NOV_1_2027: i64 = 1_825_113_600; // 2027-11-01T00:00:00Z
    let mut fee = charge("chg_year_fee", "acme", "USD", 120_000);
    fee.model = "flat";
    fee.meter = "calls";
    fee.end = NOV_1_2027;
    let month = charge("chg_nov_tokens", "acme", "USD", 2800);
    // the year's charge first: the order `v_charges` returns them in is not fixed
    insert(&db, &[fee]).await;
    insert(&db, &[month]).await;
    let now = (DEC_1 + 2 * DAY) * 1000;
    let invoices = invoice_pass(&db, Some(&numbers), &cfg(), now)
        .await
        .expect("pass");
    let got: Vec<_> = invoices
        .iter()
        .map(|i| {
            (
                i.invoice_id.clone(),
                i.period.end_ms / 1000,
                i.status == Status::Finalized,
                i.total_minor,
                i.lines.len(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [(invoice_id("acme", NOV_1 * 1000), DEC_1, true, 122_800, 2)]
    );
    // a year on: the fee's charge alone is on a final invoice; nothing new is invoiced
    let later = (NOV_1_2027 + 2 * DAY) * 1000;
    let again = invoice_pass(&db, Some(&numbers), &cfg(), later)
        .await
        .expect("pass");
    assert!(again.is_empty(), "{again:?}");
    let stored = stored(&db).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].total_minor, 122_800);
    drop_bucket(&env, &bucket).await;
    env.cleanup().await;
}
