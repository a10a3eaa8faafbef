//! Issue 14, requirement 6: one customer's bad data never stops billing for the others. A
//! customer with an overflowing window (80,000 events at the per-event maximum of 10^15:
//! 8 * 10^19 tokens in one window) and one whose period holds charges in two currencies (a
//! plan change to a plan in another currency inside the period) sit next to a normal one:
//! the rating pass prices the others and leaves the first out with its reason (counted in
//! metrics); the invoicing pass builds every invoice, one per currency for the second (issue
//! 17, item 6: docs/INVOICING.md, "One invoice per currency").

use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use tally_platform::testkit::{fold_readings, TestEnv};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::rating::usage::FailReason;
use tally_rater::{Catalog, RaterConfig};

fn catalog() -> Catalog {
    #[derive(serde::Deserialize)]
    struct File {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
    }
    let file: File = toml::from_str(
        r#"
        [[plans]]
        id = "usd"
        version = 1
        currency = "USD"
        effective_from = "2020-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "llm_tokens", unit_price = "0.000003" }]
        [[plans]]
        id = "jpy"
        version = 1
        currency = "JPY"
        effective_from = "2020-01-01T00:00:00Z"
        prices = [{ model = "per_unit", meter = "llm_tokens", unit_price = "0.0004" }]
        [[subscriptions]]
        customer = "mixed"
        plan = "usd"
        effective_from = "2026-01-01T00:00:00Z"
        [[subscriptions]]
        customer = "mixed"
        plan = "jpy"
        effective_from = "2026-11-15T00:00:00Z"
        "#,
    )
    .expect("catalog text");
    let rater = RaterConfig {
        default_plan: Some("usd".into()),
        ..RaterConfig::default()
    };
    Catalog::new(file.plans, file.subscriptions, &rater, &tally_e2e::meters()).expect("catalog")
}

/// `n` readings of `tokens` each for `customer` at `at` (a window start), as a batch.
async fn readings(
    db: &clickhouse::Client,
    batch: &str,
    customer: &str,
    at: u32,
    n: u64,
    tokens: &str,
) {
    db.query(&format!(
        "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
         window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
         unique_value, batch_id, part, inserted_at) \
         SELECT '{customer}', 'bot', concat('{batch}-', toString(number)), 'llm_tokens', 'SUM', \
         toDateTime({at}), 60, {at}000, [], [], '{{}}', toDecimal128('{tokens}', 9), '', \
         '{batch}', 0, now() FROM system.numbers LIMIT {n}"
    ))
    .execute()
    .await
    .expect("readings");
    fold_readings(db, batch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_customer_and_a_mixed_currency_one_leave_the_others_billed() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("a metrics recorder");
    let env = TestEnv::new("isolation").await;
    let db = env.db();
    let nov = |day: u32, hour: u32| {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0)
            .unwrap()
            .timestamp() as u32
    };
    readings(&db, "good", "good", nov(3, 10), 10, "1000").await;
    readings(&db, "huge", "huge", nov(3, 10), 80_000, "1000000000000000").await;
    readings(&db, "mixed-usd", "mixed", nov(5, 10), 4, "500").await;
    readings(&db, "mixed-jpy", "mixed", nov(20, 10), 6, "500").await;

    let now_ms = i64::from(nov(28, 12)) * 1000;
    let report = tally_rater::rate_once(&db, &catalog(), &RaterConfig::default(), now_ms)
        .await
        .expect("the pass goes through");
    assert_eq!(
        report.failed.get("huge"),
        Some(&FailReason::QuantityOverflow)
    );
    let mut charged: Vec<(String, &str, Decimal)> = report
        .charges
        .iter()
        .map(|c| (c.customer.clone(), c.currency, c.quantity))
        .collect();
    charged.sort();
    assert_eq!(
        charged,
        vec![
            ("good".to_owned(), "USD", Decimal::from(10_000)),
            ("mixed".to_owned(), "JPY", Decimal::from(3000)),
            ("mixed".to_owned(), "USD", Decimal::from(2000)),
        ],
        "the others are rated"
    );

    let invoicer = tally_invoicer::InvoicerConfig::default();
    let invoices = tally_invoicer::invoice_once(&db, &invoicer, now_ms)
        .await
        .expect("the invoicing pass goes through");
    let mut got: Vec<(&str, &str, i64)> = invoices
        .iter()
        .map(|i| (i.customer.as_str(), i.currency.code(), i.total_minor))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            // 10,000 tokens at 0.000003 USD = 0.03
            ("good", "USD", 3),
            // November 15 on: 3,000 tokens at 0.0004 JPY = 1.2 -> 1
            ("mixed", "JPY", 1),
            // before: 2,000 tokens at 0.000003 USD = 0.006 -> 0.01
            ("mixed", "USD", 1),
        ],
        "every invoice is built, one per currency for mixed"
    );

    let text = recorder.render();
    let value = |name: &str, reason: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("reason=\"{reason}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        value("tally_rater_customer_failures_total", "quantity_overflow"),
        1.0
    );
    assert_eq!(
        value("tally_invoicer_invoice_failures_total", "mixed_currencies"),
        0.0
    );
    env.cleanup().await;
}
