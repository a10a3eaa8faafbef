//! Recurring fees and minimums at zero usage, over the real ClickHouse (its own database):
//! an idle month still bills its flat fee and its minimum, prorated from a subscription's
//! start; a rerun of the pass changes nothing; usage arriving later re-rates the same charge
//! (same id, one row in `v_charges`); every idle charge explains and balances.
//!
//! Golden amounts, by hand, in minor units. November 2026 has 30 days; a subscription from
//! November 11 00:00 UTC covers 20/30 = 2/3 of it. Plan `pro` (USD): `calls` flat 49.99,
//! `tokens` 0.002 per unit with a minimum of 25. Plan `yen` (JPY, no decimals): `calls` flat
//! 1000, `tokens` 1 per unit with a minimum of 3000.
//! - `idle` (pro, always): calls 4999, tokens 0 trued up to 2500.
//! - `late` (pro from Nov 11): calls 49.99 x 2/3 = 33.3266... -> 3333; tokens 25 x 2/3 =
//!   16.666... -> 1667.
//! - `kaisha` (yen from Nov 11): calls 1000 x 2/3 = 666.66... -> 667; tokens 3000 x 2/3 = 2000.
//! - `busy` (pro, always): idle at first (4999, 2500); then 14,000 tokens land on November
//!   15th: 14000 x 0.002 = 28.00 -> 2800, above the minimum, no true-up line.

mod common;

use std::collections::BTreeMap;

use common::tokens;
use tally_platform::testkit::TestEnv;
use tally_rater::rating::charge::charge_id;
use tally_rater::rating::explain;
use tally_rater::RaterConfig;

const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z, seconds
const NOV_11: i64 = NOV_1 + 10 * DAY;
const DEC_1: i64 = 1_796_083_200;
const DAY: i64 = 86_400;

const CATALOG: &str = r#"
[[plans]]
id = "pro"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "49.99" },
  { model = "per_unit", meter = "tokens", unit_price = "0.002", minimum = "25" },
]
[[plans]]
id = "yen"
version = 1
currency = "JPY"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "1000" },
  { model = "per_unit", meter = "tokens", unit_price = "1", minimum = "3000" },
]
[[subscriptions]]
customer = "idle"
plan = "pro"
[[subscriptions]]
customer = "busy"
plan = "pro"
[[subscriptions]]
customer = "late"
plan = "pro"
effective_from = "2026-11-11T00:00:00Z"
[[subscriptions]]
customer = "kaisha"
plan = "yen"
effective_from = "2026-11-11T00:00:00Z"
"#;

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
struct Stored {
    charge_id: String,
    customer: String,
    period_start: u32,
    meter: String,
    currency: String,
    amount_minor: i64,
    windows: u32,
}

/// `v_charges` (the latest version of each charge), by customer, period, meter, id.
async fn charges(db: &clickhouse::Client) -> Vec<Stored> {
    db.query(
        "SELECT charge_id, customer, toUInt32(period_start), meter, currency, amount_minor, windows \
         FROM v_charges ORDER BY customer, period_start, meter, charge_id",
    )
    .fetch_all()
    .await
    .expect("v_charges")
}

fn november(all: &[Stored]) -> Vec<(String, String, String, i64, u32)> {
    all.iter()
        .filter(|c| i64::from(c.period_start) == NOV_1)
        .map(|c| {
            (
                c.customer.clone(),
                c.meter.clone(),
                c.currency.clone(),
                c.amount_minor,
                c.windows,
            )
        })
        .collect()
}

fn s(text: &str) -> String {
    text.to_owned()
}

#[tokio::test]
async fn an_idle_month_bills_its_fee_and_minimum_once_and_a_rerun_writes_nothing_new() {
    let env = TestEnv::new("rater_recurring").await;
    let db = env.db();
    let catalog = common::file_catalog(CATALOG).expect("valid catalog");
    let cfg = RaterConfig {
        lookback_secs: 5 * DAY as u64,
        ..RaterConfig::default()
    };
    // December 3rd: November (ended two days ago) and the running December are rated
    let now_ms = (DEC_1 + 2 * DAY) * 1000;
    let first = tally_rater::rate_once(&db, &catalog, &cfg, now_ms)
        .await
        .expect("pass");
    assert_eq!(first.usage_rows, 0, "no usage at all");
    assert_eq!(first.idle_charges, 16, "4 customers x 2 prices x 2 periods");
    assert!(first.failed.is_empty());
    let after_first = charges(&db).await;
    assert_eq!(
        november(&after_first),
        vec![
            (s("busy"), s("calls"), s("USD"), 4999, 0),
            (s("busy"), s("tokens"), s("USD"), 2500, 0),
            (s("idle"), s("calls"), s("USD"), 4999, 0),
            (s("idle"), s("tokens"), s("USD"), 2500, 0),
            (s("kaisha"), s("calls"), s("JPY"), 667, 0),
            (s("kaisha"), s("tokens"), s("JPY"), 2000, 0),
            (s("late"), s("calls"), s("USD"), 3333, 0),
            (s("late"), s("tokens"), s("USD"), 1667, 0),
        ]
    );
    // the running December bills its fees and minimums whole for everyone
    let december: Vec<(String, i64)> = after_first
        .iter()
        .filter(|c| i64::from(c.period_start) == DEC_1)
        .map(|c| (c.customer.clone(), c.amount_minor))
        .collect();
    assert_eq!(
        december,
        vec![
            (s("busy"), 4999),
            (s("busy"), 2500),
            (s("idle"), 4999),
            (s("idle"), 2500),
            (s("kaisha"), 1000),
            (s("kaisha"), 3000),
            (s("late"), 4999),
            (s("late"), 2500),
        ]
    );
    // the ids are those usage of the same part would get: a part starting at the
    // subscription's start carries that instant
    let late_calls = charge_id(
        "late",
        NOV_1 * 1000,
        "calls",
        &format!("{{}}@{}", NOV_11 * 1000),
        "pro",
        1,
    );
    let idle_tokens = charge_id("idle", NOV_1 * 1000, "tokens", "{}", "pro", 1);
    for id in [&late_calls, &idle_tokens] {
        assert!(after_first.iter().any(|c| &c.charge_id == id), "{id}");
    }
    // each idle charge explains: a minimum line, no windows, the lines sum to the amount
    let (stored, windows) = explain::load(&db, &idle_tokens).await.expect("stored");
    assert!(windows.is_empty());
    let e = explain::explain(&stored, windows, true).expect("readable");
    assert!(e.balanced, "{}", e.lines.join("\n"));
    assert!(
        e.lines.iter().any(|l| l.contains("minimum")),
        "{}",
        e.lines.join("\n")
    );
    let (stored, windows) = explain::load(&db, &late_calls).await.expect("stored");
    let e = explain::explain(&stored, windows, true).expect("readable");
    assert!(e.balanced, "{}", e.lines.join("\n"));

    // a rerun (a second later, or a second rater) computes the same charges: it appends them
    // again at a higher version (the rater's versioning), and v_charges is unchanged
    let rerun = tally_rater::rate_once(&db, &catalog, &cfg, now_ms + 1000)
        .await
        .expect("rerun");
    let ids = |r: &tally_rater::RateReport| {
        r.charges
            .iter()
            .map(|c| (c.charge_id.clone(), c.amount_minor))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(ids(&rerun), ids(&first));
    assert_eq!(charges(&db).await, after_first, "a rerun changes nothing");

    // usage arrives for busy's November: the idle charge is re-rated under its own id
    tokens(&db, "busy", NOV_1 + 14 * DAY, "14000", "b1").await;
    let busy = tally_rater::rate_once(&db, &catalog, &cfg, now_ms + 2000)
        .await
        .expect("pass with usage");
    assert_eq!(
        busy.idle_charges, 15,
        "busy's November tokens now have usage"
    );
    let after_usage = charges(&db).await;
    assert_eq!(after_usage.len(), after_first.len(), "no new charge");
    let busy_tokens = charge_id("busy", NOV_1 * 1000, "tokens", "{}", "pro", 1);
    let got: Vec<(i64, u32)> = after_usage
        .iter()
        .filter(|c| c.charge_id == busy_tokens)
        .map(|c| (c.amount_minor, c.windows))
        .collect();
    assert_eq!(got, vec![(2800, 1)], "14000 x 0.002, above the minimum");
    let others = |all: &[Stored]| -> Vec<Stored> {
        all.iter()
            .filter(|c| c.charge_id != busy_tokens)
            .cloned()
            .collect()
    };
    assert_eq!(others(&after_usage), others(&after_first));
    let (stored, windows) = explain::load(&db, &busy_tokens).await.expect("stored");
    assert_eq!(windows.len(), 1);
    let e = explain::explain(&stored, windows, true).expect("readable");
    assert!(e.balanced, "{}", e.lines.join("\n"));
    env.cleanup().await;
}
