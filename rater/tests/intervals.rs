//! Billing intervals over the real ClickHouse (its own database): an annual fee with usage
//! and minimums billed monthly in New York time, a quarterly subscription anchored on
//! February, and a weekly one in Berlin time. Each charge lands in the period of its own
//! cycle, at the zone's midnight (DST-correct), and an idle period still owes its fee and
//! minimum.
//!
//! Golden amounts by hand, in minor units; instants are UTC seconds, by hand from the zone's
//! offset at each boundary. A pass on 2026-12-03 00:00 UTC looking back 5 days (to Nov 28).
//! - `yearly` (plan `annual`: `calls` flat 1,200.00 per year, `tokens` 0.002 per unit with a
//!   minimum of 10.00 per month; `interval = "annual"`, `usage_interval = "monthly"`,
//!   America/New_York): the year 2026 runs from Jan 1 00:00 EST = 05:00Z to Jan 1 2027
//!   05:00Z: fee 120000. November runs from Nov 1 00:00 EDT = 04:00Z to Dec 1 00:00 EST =
//!   05:00Z: 14,000 tokens x 0.002 = 28.00 -> 2800. December (idle so far): minimum 1000.
//! - `quarter` (plan `pro`: `calls` flat 30.00, `tokens` minimum 10.00, quarterly from
//!   February, UTC): the quarter Nov 1 - Feb 1 2027: fee 3000, minimum 1000.
//! - `weekly` (plan `pro`, weekly from Monday, Europe/Berlin): weeks start Monday 00:00 CET
//!   = Sunday 23:00Z. The week of Nov 23 (ends Nov 29 23:00Z, after the horizon): 3000 and
//!   1000; the week of Nov 30: 3000, and 7,500 tokens on Dec 1 = 15.00 -> 1500.

mod common;

use common::tokens;
use tally_platform::testkit::TestEnv;

const DAY: i64 = 86_400;
const DEC_3: i64 = 1_796_256_000; // 2026-12-03T00:00:00Z
const YEAR_2026_NY: i64 = 1_767_243_600; // 2026-01-01T05:00:00Z
const YEAR_2027_NY: i64 = 1_798_779_600; // 2027-01-01T05:00:00Z
const NOV_NY: i64 = 1_793_505_600; // 2026-11-01T04:00:00Z (EDT)
const DEC_NY: i64 = 1_796_101_200; // 2026-12-01T05:00:00Z (EST)
const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z
const FEB_1: i64 = 1_801_440_000; // 2027-02-01T00:00:00Z
const WEEK_NOV_23: i64 = 1_795_388_400; // 2026-11-22T23:00:00Z (Mon 00:00 CET)
const WEEK_NOV_30: i64 = 1_795_993_200; // 2026-11-29T23:00:00Z
const WEEK_DEC_7: i64 = 1_796_598_000; // 2026-12-06T23:00:00Z

const CATALOG: &str = r#"
[[plans]]
id = "annual"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "1200" },
  { model = "per_unit", meter = "tokens", unit_price = "0.002", minimum = "10" },
]
[[plans]]
id = "pro"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "30" },
  { model = "per_unit", meter = "tokens", unit_price = "0.002", minimum = "10" },
]
[[subscriptions]]
customer = "yearly"
plan = "annual"
interval = "annual"
usage_interval = "monthly"
time_zone = "America/New_York"
[[subscriptions]]
customer = "quarter"
plan = "pro"
interval = "quarterly"
billing_anchor_month = 2
[[subscriptions]]
customer = "weekly"
plan = "pro"
interval = "weekly"
billing_anchor_day = 1
time_zone = "Europe/Berlin"
"#;

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
struct Stored {
    customer: String,
    period_start: u32,
    period_end: u32,
    meter: String,
    amount_minor: i64,
}

/// `v_charges`: (customer, period start, period end, meter, amount), in that order.
async fn charges(db: &clickhouse::Client) -> Vec<(String, i64, i64, String, i64)> {
    db.query(
        "SELECT customer, toUInt32(period_start), toUInt32(period_end), meter, amount_minor \
         FROM v_charges ORDER BY customer, period_start, meter",
    )
    .fetch_all::<Stored>()
    .await
    .expect("v_charges")
    .into_iter()
    .map(|c| {
        (
            c.customer,
            i64::from(c.period_start),
            i64::from(c.period_end),
            c.meter,
            c.amount_minor,
        )
    })
    .collect()
}

fn row(c: &str, from: i64, to: i64, meter: &str, amount: i64) -> (String, i64, i64, String, i64) {
    (c.to_owned(), from, to, meter.to_owned(), amount)
}

#[tokio::test]
async fn an_annual_fee_with_monthly_usage_a_quarter_and_weeks_in_their_zones() {
    let env = TestEnv::new("rater_intervals").await;
    let db = env.db();
    let catalog = common::file_catalog(CATALOG).expect("valid catalog");
    tokens(&db, "yearly", NOV_1 + 14 * DAY + DAY / 2, "14000", "y1").await;
    tokens(&db, "weekly", DEC_3 - 2 * DAY + DAY / 2, "7500", "w1").await;
    common::rate_at(&db, &catalog, DEC_3, 5).await;
    assert_eq!(
        charges(&db).await,
        vec![
            row("quarter", NOV_1, FEB_1, "calls", 3000),
            row("quarter", NOV_1, FEB_1, "tokens", 1000),
            row("weekly", WEEK_NOV_23, WEEK_NOV_30, "calls", 3000),
            row("weekly", WEEK_NOV_23, WEEK_NOV_30, "tokens", 1000),
            row("weekly", WEEK_NOV_30, WEEK_DEC_7, "calls", 3000),
            row("weekly", WEEK_NOV_30, WEEK_DEC_7, "tokens", 1500),
            row("yearly", YEAR_2026_NY, YEAR_2027_NY, "calls", 120_000),
            row("yearly", NOV_NY, DEC_NY, "tokens", 2800),
            row("yearly", DEC_NY, YEAR_2027_NY, "tokens", 1000),
        ]
    );
    // the stored catalog's view names the intervals
    let sub = catalog
        .subscription(&tally_domain::CustomerId::new("yearly").expect("id"))
        .expect("subscribed");
    assert_eq!(sub.cycle.cycle.interval(), "annual");
    assert_eq!(sub.usage_cycle.cycle.interval(), "monthly");
    env.cleanup().await;
}

#[test]
fn bad_intervals_are_refused_naming_the_field() {
    let bad = |sub: &str| {
        let text = format!(
            "[[plans]]\nid = \"p\"\nversion = 1\ncurrency = \"USD\"\n\
             effective_from = \"2026-01-01T00:00:00Z\"\nprices = []\n\
             [[subscriptions]]\ncustomer = \"c\"\nplan = \"p\"\n{sub}\n"
        );
        common::file_catalog(&text).unwrap_err().to_string()
    };
    let e = bad("interval = \"quarterly\"\nbilling_anchor_month = 13");
    assert!(e.contains("subscriptions[0].billing_anchor_month"), "{e}");
    let e = bad("interval = \"weekly\"\nbilling_anchor_day = 8");
    assert!(e.contains("subscriptions[0].billing_anchor_day"), "{e}");
    assert!(e.contains("anchor_weekday is 8"), "{e}");
}

const OCT_1: i64 = 1_790_812_800; // 2026-10-01T00:00:00Z
const JAN_1: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const JAN_1_2027: i64 = 1_798_761_600; // 2027-01-01T00:00:00Z

const LONG_PERIODS: &str = r#"
[[plans]]
id = "pro"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "calls", amount = "30" },
  { model = "per_unit", meter = "tokens", unit_price = "0.002", minimum = "10" },
]
[[subscriptions]]
customer = "q"
plan = "pro"
interval = "quarterly"
billing_anchor_month = 1
[[subscriptions]]
customer = "y"
plan = "pro"
interval = "annual"
"#;

/// A pass late in a quarter and a year (Dec 3, looking back 5 days) rates their usage whole:
/// `q` (quarters from January, UTC) used 20,000 tokens on Oct 5: 40.00 -> 4000 (above the
/// minimum of 1000); `y` (annual fee and annual usage, UTC) used 30,000 tokens on Mar 10 and
/// 5,000 on Dec 1: 35,000 x 0.002 = 70.00 -> 7000. Reading only the month before the
/// horizon, the pass wrote the minimum (1000) and 5,000 tokens (1000) over them.
#[tokio::test]
async fn a_pass_late_in_a_quarter_or_a_year_rates_its_whole_usage() {
    let env = TestEnv::new("rater_long_periods").await;
    let db = env.db();
    let catalog = common::file_catalog(LONG_PERIODS).expect("valid catalog");
    tokens(&db, "q", 1_791_201_600, "20000", "q1").await; // 2026-10-05T12:00Z
    tokens(&db, "y", 1_773_144_000, "30000", "y1").await; // 2026-03-10T12:00Z
    tokens(&db, "y", 1_796_126_400, "5000", "y2").await; // 2026-12-01T12:00Z
    common::rate_at(&db, &catalog, DEC_3, 5).await;
    assert_eq!(
        charges(&db).await,
        vec![
            row("q", OCT_1, JAN_1_2027, "calls", 3000),
            row("q", OCT_1, JAN_1_2027, "tokens", 4000),
            row("y", JAN_1, JAN_1_2027, "calls", 3000),
            row("y", JAN_1, JAN_1_2027, "tokens", 7000),
        ]
    );
    env.cleanup().await;
}
