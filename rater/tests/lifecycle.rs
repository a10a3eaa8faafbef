//! A subscription's lifecycle, over the real ClickHouse (its own database): a cancellation
//! in the middle of a period, an `ends_at`, a free trial that converts to the paid terms, a
//! half-price trial of one period, and a pause with a resume. Each final period is cut at
//! the end (the charges' `period_end`, from which the invoicer finalizes the final invoice),
//! fees and minimums are prorated by the time covered, and usage outside the covered time
//! is not billed.
//!
//! Golden amounts, by hand, in minor units. November 2026 has 30 days. Plan `pro` (USD):
//! `calls` flat 30.00 per period, `tokens` 0.002 per unit with a minimum of 10.00.
//! - `quits` (pro, cancelled at Nov 11 00:00 UTC, 10/30 of November): fee 30 x 1/3 = 10.00
//!   -> 1000; 2,500 tokens on Nov 5 = 5.00, above the prorated minimum 3.33 -> 500; 9,999
//!   tokens on Nov 20 are after the end: not billed. Period cut to end at Nov 11.
//! - `fixed` (pro from Nov 1, `ends_at` Nov 21, 20/30): fee 2000; minimum 10 x 2/3 =
//!   6.666... -> 667. Period cut to end at Nov 21.
//! - `trier` (pro from Nov 1, free 14-day trial): the trial part Nov 1-15 (14/30) owes
//!   14.00 and 4.67, 100% off -> 0 and 0; the paid part Nov 15 - Dec 1 (16/30): fee 16.00
//!   -> 1600, minimum 10 x 16/30 = 5.333... -> 533. December whole: 3000, 1000.
//! - `halfoff` (pro from Nov 1, trial of 1 period at 50%): November 1500 and 500; December
//!   (converted) 3000 and 1000.
//! - `napper` (pro, paused Nov 11, resumed Nov 21): Nov 1-11 and Nov 21 - Dec 1, 10/30
//!   each: fees 1000 + 1000, minimums 333 + 333; 7,000 tokens on Nov 15 (paused) are not
//!   billed. Not cut: it runs on.
//!
//! Through the API (`POST /v1/subscriptions/cancel`, a `cancelled` record appended to the
//! stored catalog): `acme` (anchor day 15) cancelled at the end of the period containing
//! Nov 20 ends on Dec 15; `beta` cancelled at Nov 20 12:00 UTC, 19.5 of November's 30
//! days: fee 30 x 19.5/30 = 19.50 -> 1950, minimum 10 x 19.5/30 = 6.50 -> 650, its final
//! period cut at Nov 20 12:00.

mod common;

use common::http::{post, start};
use common::tokens;
use tally_platform::testkit::TestEnv;
use tally_rater::RaterConfig;

const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z, seconds
const DEC_1: i64 = 1_796_083_200;
const DAY: i64 = 86_400;

const PLAN: &str = r#"
[[plans]]
id = "pro"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "30" },
  { model = "per_unit", meter = "tokens", unit_price = "0.002", minimum = "10" },
]
"#;

const SUBSCRIPTIONS: &str = r#"
[[subscriptions]]
customer = "quits"
plan = "pro"
[[subscriptions]]
customer = "quits"
plan = "pro"
effective_from = "2026-11-11T00:00:00Z"
state = "cancelled"
[[subscriptions]]
customer = "fixed"
plan = "pro"
effective_from = "2026-11-01T00:00:00Z"
ends_at = "2026-11-21T00:00:00Z"
[[subscriptions]]
customer = "trier"
plan = "pro"
effective_from = "2026-11-01T00:00:00Z"
trial = { days = 14 }
[[subscriptions]]
customer = "halfoff"
plan = "pro"
effective_from = "2026-11-01T00:00:00Z"
trial = { periods = 1, percent_off = "50" }
[[subscriptions]]
customer = "napper"
plan = "pro"
[[subscriptions]]
customer = "napper"
plan = "pro"
effective_from = "2026-11-11T00:00:00Z"
state = "paused"
[[subscriptions]]
customer = "napper"
plan = "pro"
effective_from = "2026-11-21T00:00:00Z"
"#;

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
struct Stored {
    customer: String,
    period_start: u32,
    period_end: u32,
    meter: String,
    amount_minor: i64,
    amount_before_discounts_minor: i64,
}

/// `v_charges` (the latest version of each charge), by customer, period, meter, amount.
async fn charges(db: &clickhouse::Client) -> Vec<Stored> {
    db.query(
        "SELECT customer, toUInt32(period_start), toUInt32(period_end), meter, amount_minor, \
         amount_before_discounts_minor FROM v_charges \
         ORDER BY customer, period_start, meter, amount_minor",
    )
    .fetch_all()
    .await
    .expect("v_charges")
}

/// (customer, period start, period end, meter, amount, amount before discounts) for one
/// customer, as u32 seconds for the instants.
fn rows(all: &[Stored], customer: &str) -> Vec<(i64, i64, &'static str, i64, i64)> {
    all.iter()
        .filter(|c| c.customer == customer)
        .map(|c| {
            let meter: &'static str = if c.meter == "calls" {
                "calls"
            } else {
                "tokens"
            };
            (
                i64::from(c.period_start),
                i64::from(c.period_end),
                meter,
                c.amount_minor,
                c.amount_before_discounts_minor,
            )
        })
        .collect()
}

#[tokio::test]
async fn cancellation_end_trials_and_pause_bill_exactly_the_covered_time() {
    let env = TestEnv::new("rater_lifecycle").await;
    let db = env.db();
    let catalog = common::file_catalog(&format!("{PLAN}{SUBSCRIPTIONS}")).expect("valid catalog");
    tokens(&db, "quits", NOV_1 + 4 * DAY, "2500", "q1").await;
    tokens(&db, "quits", NOV_1 + 19 * DAY, "9999", "q2").await;
    tokens(&db, "napper", NOV_1 + 14 * DAY, "7000", "n1").await;
    let cfg = RaterConfig {
        lookback_secs: 5 * DAY as u64,
        ..RaterConfig::default()
    };
    // December 3rd: November (ended two days ago) and the running December are rated
    let now_ms = (DEC_1 + 2 * DAY) * 1000;
    let report = tally_rater::rate_once(&db, &catalog, &cfg, now_ms)
        .await
        .expect("pass");
    assert!(report.failed.is_empty());
    assert_eq!(
        report.skipped.no_subscription, 2,
        "quits' Nov 20, napper's Nov 15"
    );
    let all = charges(&db).await;
    let (nov_11, nov_15, nov_21) = (NOV_1 + 10 * DAY, NOV_1 + 14 * DAY, NOV_1 + 20 * DAY);
    assert_eq!(
        rows(&all, "quits"),
        vec![
            (NOV_1, nov_11, "calls", 1000, 1000),
            (NOV_1, nov_11, "tokens", 500, 500),
        ],
        "cut at the cancellation, nothing in December"
    );
    assert_eq!(
        rows(&all, "fixed"),
        vec![
            (NOV_1, nov_21, "calls", 2000, 2000),
            (NOV_1, nov_21, "tokens", 667, 667),
        ]
    );
    assert_eq!(
        rows(&all, "trier"),
        vec![
            (NOV_1, DEC_1, "calls", 0, 1400),
            (NOV_1, DEC_1, "calls", 1600, 1600),
            (NOV_1, DEC_1, "tokens", 0, 467),
            (NOV_1, DEC_1, "tokens", 533, 533),
            (DEC_1, DEC_1 + 31 * DAY, "calls", 3000, 3000),
            (DEC_1, DEC_1 + 31 * DAY, "tokens", 1000, 1000),
        ],
        "free until Nov 15 ({nov_15}), then paid"
    );
    assert_eq!(
        rows(&all, "halfoff"),
        vec![
            (NOV_1, DEC_1, "calls", 1500, 3000),
            (NOV_1, DEC_1, "tokens", 500, 1000),
            (DEC_1, DEC_1 + 31 * DAY, "calls", 3000, 3000),
            (DEC_1, DEC_1 + 31 * DAY, "tokens", 1000, 1000),
        ]
    );
    assert_eq!(
        rows(&all, "napper"),
        vec![
            (NOV_1, DEC_1, "calls", 1000, 1000),
            (NOV_1, DEC_1, "calls", 1000, 1000),
            (NOV_1, DEC_1, "tokens", 333, 333),
            (NOV_1, DEC_1, "tokens", 333, 333),
            (DEC_1, DEC_1 + 31 * DAY, "calls", 3000, 3000),
            (DEC_1, DEC_1 + 31 * DAY, "tokens", 1000, 1000),
        ]
    );
    // a rerun writes the same charges
    let rerun = tally_rater::rate_once(&db, &catalog, &cfg, now_ms + 1000)
        .await
        .expect("rerun");
    assert_eq!(rerun.charges.len(), report.charges.len());
    assert_eq!(charges(&db).await, all);
    env.cleanup().await;
}

const API_SUBSCRIPTIONS: &str = r#"
[[subscriptions]]
customer = "acme"
plan = "pro"
billing_anchor_day = 15
[[subscriptions]]
customer = "beta"
plan = "pro"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_cancels_now_or_at_period_end_and_the_final_period_is_cut_and_prorated() {
    let env = TestEnv::new("rater_cancel_api").await;
    let db = env.db();
    common::store_catalog(&db, &format!("{PLAN}{API_SUBSCRIPTIONS}")).await;
    let (addr, stop, server) = start(db.clone()).await;
    let cancel = |body: serde_json::Value| async move {
        post(addr, "/v1/subscriptions/cancel", &body).await
    };
    let (status, body) = cancel(serde_json::json!({"customer": "acme",
        "at": "2026-11-20T10:00:00Z", "at_period_end": true}))
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["entry"]["effective_from"], "2026-12-15T00:00:00Z");
    assert_eq!(body["entry"]["state"], "cancelled");
    // nothing is in force after it any more
    let (status, body) = cancel(serde_json::json!({"customer": "acme",
        "at": "2026-12-20T00:00:00Z"}))
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = cancel(serde_json::json!({"customer": "nobody"})).await;
    assert_eq!(status, 404);
    let (status, body) = cancel(serde_json::json!({"customer": "beta", "when": "now"})).await;
    assert_eq!(status, 400, "unknown field: {body}");
    let (status, body) = cancel(serde_json::json!({"customer": "beta",
        "at": "2026-11-20T12:00:00Z"}))
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, subs) = common::http::get(addr, "/v1/customers/beta/subscriptions").await;
    assert_eq!(status, 200);
    assert_eq!(subs[0]["effective_to"], "2026-11-20T12:00:00Z", "{subs}");
    stop.cancel();
    server.await.expect("server stops");

    let catalog = common::stored_catalog(&db).await;
    common::rate_at(&db, &catalog, DEC_1 + 2 * DAY, 5).await;
    let nov_20_noon = NOV_1 + 19 * DAY + DAY / 2;
    assert_eq!(
        rows(&charges(&db).await, "beta"),
        vec![
            (NOV_1, nov_20_noon, "calls", 1950, 1950),
            (NOV_1, nov_20_noon, "tokens", 650, 650),
        ]
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_cancellation_before_a_stored_later_record_is_refused_and_one_after_it_ends_the_line() {
    // `mover` on pro from Nov 1, with a migration to a pinned version stored for Jan 1, 2027
    let env = TestEnv::new("rater_cancel_later").await;
    let db = env.db();
    let records = r#"
[[subscriptions]]
customer = "mover"
plan = "pro"
effective_from = "2026-11-01T00:00:00Z"
[[subscriptions]]
customer = "mover"
plan = "pro"
plan_version = 1
effective_from = "2027-01-01T00:00:00Z"
"#;
    common::store_catalog(&db, &format!("{PLAN}{records}")).await;
    let (addr, stop, server) = start(db.clone()).await;
    // cancelled on Dec 15 (now, or at the end of November's period): the January record would
    // resume billing on Jan 1 (old code: 201, and January billed 3000 + 1000), so refused
    for body in [
        serde_json::json!({"customer": "mover", "at": "2026-12-15T00:00:00Z"}),
        serde_json::json!({"customer": "mover", "at": "2026-11-20T00:00:00Z", "at_period_end": true}),
    ] {
        let (status, answer) = post(addr, "/v1/subscriptions/cancel", &body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (409, Some("later_records")),
            "{body}: {answer}"
        );
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("2027-01-01T00:00:00"), "{detail}");
    }
    // a raw cancelled record through POST /v1/subscriptions: the same rule
    let (status, answer) = post(
        addr,
        "/v1/subscriptions",
        &serde_json::json!({"customer": "mover", "plan": "pro", "state": "cancelled",
            "effective_from": "2026-12-15T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("later_records")),
        "{answer}"
    );
    // at or after the last stored record: the line ends there
    let (status, answer) = post(
        addr,
        "/v1/subscriptions/cancel",
        &serde_json::json!({"customer": "mover", "at": "2027-01-10T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    stop.cancel();
    server.await.expect("server stops");

    // by hand: December whole, 3000 and 1000 (no usage: the minimum trued up); January cut
    // at Jan 10, 9 of 31 days: fee 30 x 9/31 = 8.709... -> 871, minimum 10 x 9/31 =
    // 2.903... -> 290; nothing after
    let jan_1 = DEC_1 + 31 * DAY;
    let jan_10 = jan_1 + 9 * DAY;
    let catalog = common::stored_catalog(&db).await;
    common::rate_at(&db, &catalog, jan_10 + 2 * DAY, 40).await;
    common::rate_at(&db, &catalog, jan_1 + 40 * DAY, 40).await;
    assert_eq!(
        rows(&charges(&db).await, "mover"),
        vec![
            (DEC_1, jan_1, "calls", 3000, 3000),
            (DEC_1, jan_1, "tokens", 1000, 1000),
            (jan_1, jan_10, "calls", 871, 871),
            (jan_1, jan_10, "tokens", 290, 290),
        ]
    );
    env.cleanup().await;
}
