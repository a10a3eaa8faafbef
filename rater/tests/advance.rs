//! Fees billed in advance (`billing = "in_advance"`), over the real ClickHouse (its own
//! database): each part of a billing period is charged from its start, on the invoice that is
//! finalized then (the previous period's, `[previous start, start)`, or for a part starting
//! inside its period an invoice of its own, `[start, start)`); a mid-month start pays the rest
//! of its month at once, every later month is charged whole at its start, usage or not; a
//! cancellation or plan change recorded later re-rates the same charge to the part it covered
//! (the unused part is what the invoicer credits) and a new plan's fee is charged from the
//! change; a trial and a pinned version keep working.
//!
//! Golden amounts, by hand, in minor units. November 2026 has 30 days, December 31. Plan
//! `adv` (USD): `calls` flat 30.00 in advance, `tokens` 0.002 per unit (in arrears); version 2
//! from 2027-01-01 charges 45.00. Plan `big`: `calls` flat 60.00 in advance.
//! - `late` (adv from Nov 11): 30 x 20/30 = 20.00 -> 2000 at Nov 11, on its own invoice
//!   `[Nov 11, Nov 11)`; December 3000 at Dec 1 on November's invoice; January (version 2,
//!   not pinned) 4500 at Jan 1 on December's invoice, although it had no usage at all.
//! - `pinned` (adv v1 pinned, from Nov 1): November 3000 on October's invoice (a start with
//!   the period), December 3000, January still 3000.
//! - `trial` (adv from Nov 1, free 14-day trial): the trial part Nov 1-15 costs 30 x 14/30 =
//!   14.00 before the 100% trial discount -> 0 (1400 before discounts), on October's
//!   invoice; the paid rest Nov 15 - Dec 1, 30 x 16/30 = 16.00 -> 1600 at Nov 15 on its own
//!   invoice; December 3000.
//! - `moves` (adv from Nov 1; big from Nov 21 once recorded): November 3000 at Nov 1; after
//!   the change, the same charge is 30 x 20/30 = 2000 (1000 unused, credited) and big's
//!   60 x 10/30 = 2000 is charged at Nov 21 on its own invoice; December 6000. Its 10,000
//!   tokens on Nov 5 are billed in arrears with November: 10000 x 0.002 = 2000.
//! - `quits` (adv from Nov 1; cancelled Nov 21 once recorded): November 3000, then 2000
//!   (1000 unused, credited); no December fee.

mod common;

use common::tokens;
use tally_platform::testkit::TestEnv;
use tally_rater::rating::charge::charge_id;
use tally_rater::rating::explain;

const DAY: i64 = 86_400;
const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z, seconds
const OCT_1: i64 = NOV_1 - 31 * DAY;
const NOV_11: i64 = NOV_1 + 10 * DAY;
const NOV_15: i64 = NOV_1 + 14 * DAY;
const NOV_21: i64 = NOV_1 + 20 * DAY;
const DEC_1: i64 = NOV_1 + 30 * DAY;
const JAN_1: i64 = DEC_1 + 31 * DAY;

const PLANS: &str = r#"
[[plans]]
id = "adv"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "30", billing = "in_advance" },
  { model = "per_unit", meter = "tokens", unit_price = "0.002" },
]
[[plans]]
id = "adv"
version = 2
currency = "USD"
effective_from = "2027-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "45", billing = "in_advance" },
  { model = "per_unit", meter = "tokens", unit_price = "0.002" },
]
[[plans]]
id = "big"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "60", billing = "in_advance" },
  { model = "per_unit", meter = "tokens", unit_price = "0.002" },
]
[[subscriptions]]
customer = "late"
plan = "adv"
effective_from = "2026-11-11T00:00:00Z"
[[subscriptions]]
customer = "pinned"
plan = "adv"
plan_version = 1
effective_from = "2026-11-01T00:00:00Z"
[[subscriptions]]
customer = "trial"
plan = "adv"
effective_from = "2026-11-01T00:00:00Z"
trial = { days = 14 }
[[subscriptions]]
customer = "moves"
plan = "adv"
effective_from = "2026-11-01T00:00:00Z"
[[subscriptions]]
customer = "quits"
plan = "adv"
effective_from = "2026-11-01T00:00:00Z"
"#;

/// Recorded on November 21st: `quits` cancels, `moves` changes to `big`.
const CHANGES: &str = r#"
[[subscriptions]]
customer = "quits"
plan = "adv"
effective_from = "2026-11-21T00:00:00Z"
state = "cancelled"
[[subscriptions]]
customer = "moves"
plan = "big"
effective_from = "2026-11-21T00:00:00Z"
"#;

/// (customer, meter, invoice period start, end, amount, amount before discounts, plan
/// version) of the latest version of every charge, in that order.
type Row = (String, String, i64, i64, i64, i64, u32);

#[derive(clickhouse::Row, serde::Deserialize)]
struct Stored {
    charge_id: String,
    customer: String,
    meter: String,
    period_start: u32,
    period_end: u32,
    amount_minor: i64,
    amount_before_discounts_minor: i64,
    plan_version: u32,
}

async fn charges(db: &clickhouse::Client) -> Vec<(String, Row)> {
    let rows: Vec<Stored> = db
        .query(
            "SELECT charge_id, customer, meter, toUInt32(period_start), toUInt32(period_end), \
             amount_minor, amount_before_discounts_minor, plan_version FROM v_charges \
             ORDER BY customer, period_start, period_end, meter, amount_minor",
        )
        .fetch_all()
        .await
        .expect("v_charges");
    rows.into_iter()
        .map(|r| {
            (
                r.charge_id,
                (
                    r.customer,
                    r.meter,
                    i64::from(r.period_start),
                    i64::from(r.period_end),
                    r.amount_minor,
                    r.amount_before_discounts_minor,
                    r.plan_version,
                ),
            )
        })
        .collect()
}

fn row(customer: &str, meter: &str, inv: (i64, i64), amount: i64, before: i64, v: u32) -> Row {
    (
        customer.into(),
        meter.into(),
        inv.0,
        inv.1,
        amount,
        before,
        v,
    )
}

/// One committed window of `calls` (COUNT, no groups) for `customer` at `at` (secs): usage
/// of the in-advance fee's meter, which must not bill the fee again.
async fn calls(db: &clickhouse::Client, customer: &str, at: i64, value: &str, batch: &str) {
    tally_platform::testkit::commit_window(db, customer, "calls", "COUNT", at, &[], value, batch)
        .await;
}

/// The fee's charge of the part of `customer`'s period `period_start` from `from` (plan
/// `plan` version `v`): the id usage of that part would have.
fn fee_id(customer: &str, period_start: i64, from: i64, plan: &str, v: u32) -> String {
    let group = if from == period_start {
        "{}".to_owned()
    } else {
        format!("{{}}@{}", from * 1000)
    };
    charge_id(customer, period_start * 1000, "calls", &group, plan, v)
}

#[tokio::test]
async fn fees_in_advance_are_charged_at_each_period_start_prorated_from_a_mid_month_start() {
    let env = TestEnv::new("rater_advance").await;
    let db = env.db();
    let catalog = common::file_catalog(PLANS).expect("valid catalog");
    tokens(&db, "moves", NOV_1 + 4 * DAY, "10000", "t1").await;
    // late's own calls: usage of the fee's meter bills nothing more
    calls(&db, "late", NOV_11 + 3600, "7", "c1").await;
    calls(&db, "late", NOV_11 + 7200, "5", "c2").await;

    // November 11th, noon: every November part has begun
    let first = common::rate_at(&db, &catalog, NOV_11 + DAY / 2, 15).await;
    assert_eq!(first.advance_charges, 5);
    let oct = (OCT_1, NOV_1);
    let nov = (NOV_1, DEC_1);
    let expected_nov = vec![
        row("late", "calls", (NOV_11, NOV_11), 2000, 2000, 1),
        row("moves", "calls", oct, 3000, 3000, 1),
        row("moves", "tokens", nov, 2000, 2000, 1),
        row("pinned", "calls", oct, 3000, 3000, 1),
        row("quits", "calls", oct, 3000, 3000, 1),
        row("trial", "calls", oct, 0, 1400, 1),
    ];
    let got: Vec<Row> = charges(&db).await.into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, expected_nov);
    let stored = charges(&db).await;
    let late_nov = fee_id("late", NOV_1, NOV_11, "adv", 1);
    assert_eq!(stored[0].0, late_nov, "named by its part, like usage of it");
    // an advance charge explains and balances (no windows: the fee needs none)
    let (charge, windows) = explain::load(&db, &late_nov).await.expect("stored");
    let e = explain::explain(&charge, windows, true).expect("readable");
    assert!(e.balanced, "{}", e.lines.join("\n"));

    // December 1st, 06:00: the trial converted on Nov 15 (its rest charged then, on an
    // invoice of its own) and every December fee is charged whole on November's invoice
    let second = common::rate_at(&db, &catalog, DEC_1 + DAY / 4, 2).await;
    assert_eq!(second.advance_charges, 11, "5 + trial's rest + 5 Decembers");
    let got: Vec<Row> = charges(&db).await.into_iter().map(|(_, r)| r).collect();
    assert_eq!(
        got,
        vec![
            row("late", "calls", nov, 3000, 3000, 1),
            row("late", "calls", (NOV_11, NOV_11), 2000, 2000, 1),
            row("moves", "calls", oct, 3000, 3000, 1),
            row("moves", "calls", nov, 3000, 3000, 1),
            row("moves", "tokens", nov, 2000, 2000, 1),
            row("pinned", "calls", oct, 3000, 3000, 1),
            row("pinned", "calls", nov, 3000, 3000, 1),
            row("quits", "calls", oct, 3000, 3000, 1),
            row("quits", "calls", nov, 3000, 3000, 1),
            row("trial", "calls", oct, 0, 1400, 1),
            row("trial", "calls", nov, 3000, 3000, 1),
            row("trial", "calls", (NOV_15, NOV_15), 1600, 1600, 1),
        ]
    );

    // January 1st: December was idle for late (no usage at all), its January fee is still
    // charged, at version 2 (45.00); pinned stays on version 1 (30.00)
    common::rate_at(&db, &catalog, JAN_1 + DAY / 4, 2).await;
    let january: Vec<Row> = charges(&db)
        .await
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.2 == DEC_1)
        .collect();
    let dec = (DEC_1, JAN_1);
    assert_eq!(
        january,
        vec![
            row("late", "calls", dec, 4500, 4500, 2),
            row("moves", "calls", dec, 4500, 4500, 2),
            row("pinned", "calls", dec, 3000, 3000, 1),
            row("quits", "calls", dec, 4500, 4500, 2),
            row("trial", "calls", dec, 4500, 4500, 2),
        ]
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_cancellation_or_plan_change_mid_period_lowers_the_fee_to_the_used_part() {
    let env = TestEnv::new("rater_advance_change").await;
    let db = env.db();
    let before = common::file_catalog(PLANS).expect("valid catalog");
    let after = common::file_catalog(&format!("{PLANS}{CHANGES}")).expect("valid catalog");
    let oct = (OCT_1, NOV_1);

    // November 2nd: the whole of November charged in advance
    common::rate_at(&db, &before, NOV_1 + DAY, 5).await;
    let was = charges(&db).await;
    let quits_nov = fee_id("quits", NOV_1, NOV_1, "adv", 1);
    let moves_nov = fee_id("moves", NOV_1, NOV_1, "adv", 1);
    let amount_of = |all: &[(String, Row)], id: &str| -> Vec<i64> {
        all.iter()
            .filter(|(i, _)| i == id)
            .map(|(_, r)| r.4)
            .collect()
    };
    assert_eq!(amount_of(&was, &quits_nov), vec![3000]);
    assert_eq!(amount_of(&was, &moves_nov), vec![3000]);

    // November 22nd, the changes recorded: the same charges, now for 20 of 30 days
    // (3000 - 2000 = 1000 each is the unused part), and big's rest from the change
    let report = common::rate_at(&db, &after, NOV_21 + DAY, 5).await;
    let now = charges(&db).await;
    assert_eq!(amount_of(&now, &quits_nov), vec![2000], "1000 to credit");
    assert_eq!(amount_of(&now, &moves_nov), vec![2000], "1000 to credit");
    let big_rest = fee_id("moves", NOV_1, NOV_21, "big", 1);
    let got: Vec<Row> = now
        .iter()
        .filter(|(_, r)| r.0 == "moves" || r.0 == "quits")
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(
        got,
        vec![
            row("moves", "calls", oct, 2000, 2000, 1),
            row("moves", "calls", (NOV_21, NOV_21), 2000, 2000, 1),
            row("quits", "calls", oct, 2000, 2000, 1),
        ]
    );
    assert!(report.charges.iter().any(|c| c.charge_id == big_rest));
    assert_eq!(
        now.iter().filter(|(_, r)| r.0 == "quits").count(),
        1,
        "one charge, re-rated: no second fee"
    );

    // December 1st: no fee for quits (cancelled); big's whole December for moves
    common::rate_at(&db, &after, DEC_1 + DAY / 4, 2).await;
    let december: Vec<Row> = charges(&db)
        .await
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.2 == NOV_1 && (r.0 == "moves" || r.0 == "quits"))
        .collect();
    assert_eq!(
        december,
        vec![row("moves", "calls", (NOV_1, DEC_1), 6000, 6000, 1)]
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_stored_catalog_keeps_billing_and_the_plan_json_shows_it_only_in_advance() {
    let env = TestEnv::new("rater_advance_store").await;
    let db = env.db();
    let extra = r#"
[[plans]]
id = "plain"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "flat", meter = "calls", amount = "30", billing = "in_arrears" }]
"#;
    common::store_catalog(&db, &format!("{PLANS}{extra}")).await;
    let stored = common::stored_catalog(&db).await;
    let price = |plan: &str| {
        let p = stored.plan_at(plan, NOV_1 * 1000).expect("plan");
        let calls = tally_domain::MeterSlug::new("calls").expect("slug");
        p.prices.get(&calls).expect("calls price").clone()
    };
    // read back from ClickHouse's JSON: still in advance, and the API's JSON says so
    assert!(price("adv").in_advance());
    let json = serde_json::to_value(price("adv")).expect("json");
    assert_eq!(json["billing"], "in_advance");
    assert_eq!(json["amount"], "30");
    // in arrears (said or not): not in advance, and the JSON stays as it was (no `billing`)
    assert!(!price("plain").in_advance());
    let json = serde_json::to_value(price("plain")).expect("json");
    assert!(json.get("billing").is_none(), "{json}");
    // rated from the stored catalog: the same fee at the same start
    let report = common::rate_at(&db, &stored, NOV_11 + DAY / 2, 15).await;
    assert_eq!(report.advance_charges, 5);
    env.cleanup().await;
}

/// The API's clock in the next test: December 5th, after December's fees were charged.
fn december_5th_ms() -> i64 {
    (DEC_1 + 4 * DAY) * 1000
}

#[tokio::test]
async fn a_backdated_change_of_a_charged_fee_in_advance_is_refused_and_a_current_one_credits_it() {
    let env = TestEnv::new("rater_advance_backdated").await;
    let db = env.db();
    common::store_catalog(&db, PLANS).await;
    // December 1st: December's fees, 30.00 each, on November's invoices
    let catalog = common::stored_catalog(&db).await;
    common::rate_at(&db, &catalog, DEC_1 + DAY / 4, 2).await;
    let quits_dec = fee_id("quits", DEC_1, DEC_1, "adv", 1);
    let moves_dec = fee_id("moves", DEC_1, DEC_1, "adv", 1);
    let amount_of = |all: &[(String, Row)], id: &str| -> Vec<i64> {
        all.iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, r)| r.4)
            .collect()
    };
    let was = charges(&db).await;
    assert_eq!(amount_of(&was, &quits_dec), vec![3000]);
    assert_eq!(amount_of(&was, &moves_dec), vec![3000]);

    let (addr, stop, server) = common::http::start_at(db.clone(), december_5th_ms).await;
    // recorded on December 5th, taking effect at or before December 1st: December's part
    // would vanish and its 3000 stay billed (old code: 201 and no credit), so refused
    for body in [
        serde_json::json!({"customer": "quits", "at": "2026-11-21T00:00:00Z"}),
        serde_json::json!({"customer": "quits", "at": "2026-12-01T00:00:00Z"}),
        serde_json::json!({"customer": "quits", "at": "2026-11-21T00:00:00Z", "at_period_end": true}),
    ] {
        let (status, answer) = common::http::post(addr, "/v1/subscriptions/cancel", &body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (409, Some("backdated_change")),
            "{body}: {answer}"
        );
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("2026-12-01T00:00:00"), "{detail}");
    }
    // a plan change effective December 1st would bill both plans' fees: refused too
    let (status, answer) = common::http::post(
        addr,
        "/v1/subscriptions",
        &serde_json::json!({"customer": "moves", "plan": "big",
            "effective_from": "2026-12-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("backdated_change")),
        "{answer}"
    );
    // after December's part began (December 3rd): appended, the part is shortened
    let (status, answer) = common::http::post(
        addr,
        "/v1/subscriptions/cancel",
        &serde_json::json!({"customer": "quits", "at": "2026-12-03T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    stop.cancel();
    server.await.expect("server stops");

    // the pass of December 5th: quits' December fee re-rated to 2 of 31 days, 3000 x 2/31 =
    // 193.55 -> 194 (2806 for the invoicer to credit); moves keeps its 3000, one fee
    let catalog = common::stored_catalog(&db).await;
    common::rate_at(&db, &catalog, DEC_1 + 4 * DAY, 5).await;
    let now = charges(&db).await;
    assert_eq!(amount_of(&now, &quits_dec), vec![194], "2806 to credit");
    assert_eq!(amount_of(&now, &moves_dec), vec![3000]);
    assert_eq!(
        now.iter()
            .filter(|(_, r)| r.0 == "moves" && r.2 == NOV_1)
            .count(),
        1,
        "no big fee beside adv's"
    );
    env.cleanup().await;
}
