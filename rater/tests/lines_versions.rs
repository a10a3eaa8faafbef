//! Several subscriptions per customer (one per product line) and pinned plan versions, over
//! the real ClickHouse (its own database) and the stored catalog.
//!
//! Golden amounts by hand, in minor units; a pass on 2026-12-03 00:00 UTC looking back 5
//! days (to Nov 28).
//! - `duo` has two lines from the beginning: `llm` (plan `llm`: `tokens` 0.002 per unit,
//!   minimum 10.00, monthly from the 1st) and `seats` (plan `seats`: `calls` flat 20.00,
//!   monthly from the 15th). 14,000 tokens on Nov 15 = 28.00 -> 2800 for November; December
//!   is idle: the minimum, 1000; the seats fee for Nov 15 - Dec 15: 2000. Cancelling the
//!   seats line leaves the llm line running.
//! - Plan `p`: version 1 (from 2026-01-01) `tokens` 0.002, version 2 (from 2026-11-01)
//!   0.003. `pinned` (version 1 from Oct 1): 10,000 tokens on Nov 10 and 10,000 on Nov 20 =
//!   20,000 x 0.002 = 40.00 -> 4000. `migrated` (version 1 from Oct 1, migrated through the
//!   API to version 2 from Nov 16): Nov 1 - 16 on v1, 10,000 x 0.002 = 2000; Nov 16 - Dec 1
//!   on v2, 10,000 x 0.003 = 3000. `floating` (no version: the one effective at the period
//!   start, v2 from November): 20,000 x 0.003 = 6000.

mod common;

use common::http::{get, post, start};
use common::tokens;
use tally_domain::CustomerId;
use tally_platform::testkit::TestEnv;

const DAY: i64 = 86_400;
const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z
const NOV_15: i64 = NOV_1 + 14 * DAY;
const DEC_1: i64 = 1_796_083_200;
const DEC_3: i64 = DEC_1 + 2 * DAY;
const DEC_15: i64 = DEC_1 + 14 * DAY;
const JAN_1: i64 = DEC_1 + 31 * DAY;

const CATALOG: &str = r#"
[[plans]]
id = "llm"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "tokens", unit_price = "0.002", minimum = "10" }]
[[plans]]
id = "seats"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "flat", meter = "calls", amount = "20" }]
[[plans]]
id = "p"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "tokens", unit_price = "0.002" }]
[[plans]]
id = "p"
version = 2
currency = "USD"
effective_from = "2026-11-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "tokens", unit_price = "0.003" }]
[[subscriptions]]
customer = "duo"
plan = "llm"
line = "llm"
[[subscriptions]]
customer = "duo"
plan = "seats"
line = "seats"
billing_anchor_day = 15
[[subscriptions]]
customer = "pinned"
plan = "p"
plan_version = 1
effective_from = "2026-10-01T00:00:00Z"
[[subscriptions]]
customer = "migrated"
plan = "p"
plan_version = 1
effective_from = "2026-10-01T00:00:00Z"
[[subscriptions]]
customer = "floating"
plan = "p"
effective_from = "2026-10-01T00:00:00Z"
"#;

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
struct Stored {
    customer: String,
    period_start: u32,
    period_end: u32,
    meter: String,
    plan_id: String,
    plan_version: u32,
    amount_minor: i64,
}

type Row = (String, i64, i64, String, String, u32, i64);

async fn charges(db: &clickhouse::Client) -> Vec<Row> {
    db.query(
        "SELECT customer, toUInt32(period_start), toUInt32(period_end), meter, plan_id, \
         plan_version, amount_minor FROM v_charges \
         ORDER BY customer, period_start, meter, plan_version",
    )
    .fetch_all::<Stored>()
    .await
    .expect("v_charges")
    .into_iter()
    .map(|c| {
        let (from, to) = (i64::from(c.period_start), i64::from(c.period_end));
        (
            c.customer,
            from,
            to,
            c.meter,
            c.plan_id,
            c.plan_version,
            c.amount_minor,
        )
    })
    .collect()
}

fn row(c: &str, from: i64, to: i64, meter: &str, plan: &str, v: u32, amount: i64) -> Row {
    (c.into(), from, to, meter.into(), plan.into(), v, amount)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lines_of_one_customer_and_a_pinned_version_next_to_a_migrated_one() {
    let env = TestEnv::new("rater_lines_versions").await;
    let db = env.db();
    let stored = common::store_catalog(&db, CATALOG).await;
    assert_eq!(
        stored.subscriptions_appended, 5,
        "both lines of duo are stored"
    );
    // the migration: explicit, dated, appended through the API (audited like any change)
    let (addr, stop, server) = start(db.clone()).await;
    let migration = serde_json::json!({"customer": "migrated", "plan": "p", "plan_version": 2,
        "effective_from": "2026-11-16T00:00:00Z"});
    let (status, body) = post(addr, "/v1/subscriptions", &migration).await;
    assert_eq!(status, 201, "{body}");
    let (_, subs) = get(addr, "/v1/customers/migrated/subscriptions").await;
    let versions: Vec<&serde_json::Value> = subs
        .as_array()
        .expect("array")
        .iter()
        .map(|s| &s["plan_version"])
        .collect();
    assert_eq!(versions, vec![&serde_json::json!(1), &serde_json::json!(2)]);
    let (_, subs) = get(addr, "/v1/customers/duo/subscriptions").await;
    assert_eq!(subs[0]["line"], "llm");
    assert_eq!(subs[1]["line"], "seats");
    assert_eq!(subs[1]["billing_anchor_day"], 15);
    stop.cancel();
    server.await.expect("server stops");

    for (customer, at, value) in [
        ("duo", NOV_15, "14000"),
        ("pinned", NOV_1 + 9 * DAY, "10000"),
        ("pinned", NOV_1 + 19 * DAY, "10000"),
        ("migrated", NOV_1 + 9 * DAY, "10000"),
        ("migrated", NOV_1 + 19 * DAY, "10000"),
        ("floating", NOV_1 + 9 * DAY, "10000"),
        ("floating", NOV_1 + 19 * DAY, "10000"),
    ] {
        tokens(&db, customer, at, value, &format!("{customer}-{at}")).await;
    }
    let catalog = common::stored_catalog(&db).await;
    common::rate_at(&db, &catalog, DEC_3, 5).await;
    assert_eq!(
        charges(&db).await,
        vec![
            row("duo", NOV_1, DEC_1, "tokens", "llm", 1, 2800),
            row("duo", NOV_15, DEC_15, "calls", "seats", 1, 2000),
            row("duo", DEC_1, JAN_1, "tokens", "llm", 1, 1000),
            row("floating", NOV_1, DEC_1, "tokens", "p", 2, 6000),
            row("migrated", NOV_1, DEC_1, "tokens", "p", 1, 2000),
            row("migrated", NOV_1, DEC_1, "tokens", "p", 2, 3000),
            row("pinned", NOV_1, DEC_1, "tokens", "p", 1, 4000),
        ]
    );
    // cancelling one line leaves the other in force
    let duo = CustomerId::new("duo").expect("id");
    let cancel = catalog
        .cancellation(&duo, "seats", DEC_3 * 1000, true)
        .expect("seats in force");
    assert_eq!(cancel.line.as_deref(), Some("seats"));
    assert_eq!(
        cancel.effective_from.map(|t| t.timestamp()),
        Some(DEC_15),
        "the end of the seats period"
    );
    env.cleanup().await;
}

#[test]
fn two_lines_pricing_one_meter_are_refused() {
    let text = CATALOG.replace("plan = \"seats\"\nline", "plan = \"p\"\nline");
    let err = common::file_catalog(&text).unwrap_err().to_string();
    assert!(err.contains("subscriptions.duo.line"), "{err}");
    assert!(err.contains("both price meter tokens"), "{err}");
    let bad = CATALOG.replacen("plan_version = 1", "plan_version = 7", 1);
    let err = common::file_catalog(&bad).unwrap_err().to_string();
    assert!(err.contains("subscriptions[2].plan_version"), "{err}");
}
