//! A correction widens the rater's read for its own customer only (issues 17/21, "reads that
//! grow with history"), over the real ClickHouse (its own database).
//!
//! `a` and `b` (plan `pro`: tokens at 1 USD each) both have usage in June 2026, rated in early
//! July: a 70 + 30 tokens (10000 minor), b 200 (20000). In December (lookback 5 days):
//! - `a`'s 30-token event of June 15th is voided (a correction recorded now): the pass
//!   re-reads a's June and re-prices it at 70 tokens (7000);
//! - `b`'s June gets 50 more tokens in storage without any correction (a committed reading
//!   written directly, which no pass within the lookback is asked to read): b's June is not
//!   read again, its stored charge stays 20000. Before this change one customer's old
//!   correction made the pass read and re-price every customer back to that event, and b's
//!   June became 25000.
//!
//! Both customers' late November is priced as usual (a 500, b 600). The second test does
//! the same with more corrected customers than one widened read names, whose old events are
//! in two different months.

mod common;

use common::tokens;
use tally_platform::testkit::TestEnv;

const DAY: i64 = 86_400;
const JUN_1: i64 = 1_780_272_000; // 2026-06-01T00:00:00Z, seconds
const JUN_15: i64 = 1_781_481_600;
const JUL_3: i64 = 1_783_036_800;
const NOV_1: i64 = 1_793_491_200;
const NOV_28: i64 = 1_795_824_000;
const DEC_3: i64 = 1_796_256_000;

const CATALOG: &str = r#"
[[plans]]
id = "pro"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "tokens", unit_price = "1" }]
[[subscriptions]]
customer = "a"
plan = "pro"
[[subscriptions]]
customer = "b"
plan = "pro"
"#;

/// Voids of events (customer, event id, at, tokens), each one 60-second window of `tokens`
/// at `at` (secs), recorded at `created` (secs), as the corrections API writes them.
async fn voids(db: &clickhouse::Client, events: &[(String, String, i64, u32)], created: i64) {
    let (mut corrections, mut deltas) = (Vec::new(), Vec::new());
    for (c, event, at, value) in events {
        corrections.push(format!(
            "('corr-{event}', '{c}', 'bot', '{event}', {ms}, 1, 'void', 'ops', 'duplicate', \
              {created_ms}, toDateTime({created}))",
            ms = at * 1000,
            created_ms = created * 1000,
        ));
        deltas.push(format!(
            "('corr-{event}', '{c}', 'bot', '{event}', 1, 'tokens', 'SUM', toDateTime({at}), 60, \
              ['kind', 'model'], ['input', 'gpt-4o'], \
              '{{\"kind\":\"input\",\"model\":\"gpt-4o\"}}', -1, \
              toDecimal128('-{value}', 9), toDateTime({created}))"
        ));
    }
    db.query(&format!(
        "INSERT INTO usage_corrections (correction_id, customer, agent, event_id, event_time_ms, \
         revision, kind, actor, reason, created_ms, created_at) VALUES {}",
        corrections.join(", ")
    ))
    .execute()
    .await
    .expect("corrections");
    db.query(&format!(
        "INSERT INTO usage_correction_deltas (correction_id, customer, agent, event_id, revision, \
         meter, aggregation, window_start, window_secs, group_names, group_values, group_key, \
         events, value, created_at) VALUES {}",
        deltas.join(", ")
    ))
    .execute()
    .await
    .expect("correction deltas");
}

#[tokio::test]
async fn a_correction_re_reads_the_old_periods_of_its_customer_only() {
    let env = TestEnv::new("rater_reach").await;
    let db = env.db();
    let catalog = common::file_catalog(CATALOG).expect("valid catalog");
    tokens(&db, "a", JUN_15, "70", "a-1").await;
    tokens(&db, "a", JUN_15 + 60, "30", "a-2").await;
    tokens(&db, "b", JUN_15, "200", "b-1").await;
    tokens(&db, "a", NOV_28 + DAY, "5", "a-3").await;
    tokens(&db, "b", NOV_28 + DAY, "6", "b-3").await;

    // early July: June is rated
    common::rate_at(&db, &catalog, JUL_3, 5).await;
    let june = vec![("a".to_owned(), 10_000), ("b".to_owned(), 20_000)];
    assert_eq!(common::period(&db, JUN_1).await, june);

    // b's June changes in storage without a correction; a's 30-token event is voided now
    tokens(&db, "b", JUN_15 + 120, "50", "b-2").await;
    let void = ("a".to_owned(), "e-a-2".to_owned(), JUN_15 + 60, 30);
    voids(&db, &[void], DEC_3 - 3_600).await;

    let report = common::rate_at(&db, &catalog, DEC_3, 5).await;
    assert_eq!(
        common::period(&db, JUN_1).await,
        vec![("a".to_owned(), 7_000), ("b".to_owned(), 20_000)],
        "a's June re-priced, b's June not read again"
    );
    let june_charged: Vec<&str> = report
        .charges
        .iter()
        .filter(|c| c.period.start_ms == JUN_1 * 1000)
        .map(|c| c.customer.as_str())
        .collect();
    assert_eq!(june_charged, vec!["a"], "only a's June is priced");
    // nothing between June and the lookback is priced for anyone (a's horizon is June 15th,
    // b's November 28th): only June (a) and November and December (both)
    let mut periods: Vec<(String, i64)> = report
        .charges
        .iter()
        .map(|c| (c.customer.clone(), c.period.start_ms / 1000))
        .collect();
    periods.sort();
    periods.dedup();
    assert_eq!(
        periods,
        vec![
            ("a".to_owned(), JUN_1),
            ("a".to_owned(), NOV_1),
            ("b".to_owned(), NOV_1),
        ]
    );
    assert_eq!(
        common::period(&db, NOV_1).await,
        vec![("a".to_owned(), 500), ("b".to_owned(), 600)]
    );

    // a rerun is idempotent: the same charges
    let again = common::rate_at(&db, &catalog, DEC_3 + 60, 5).await;
    let amounts = |r: &tally_rater::RateReport| {
        let mut v: Vec<(String, i64)> = r
            .charges
            .iter()
            .map(|c| (c.charge_id.clone(), c.amount_minor))
            .collect();
        v.sort();
        v
    };
    assert_eq!(amounts(&again), amounts(&report));
}

const AUG_1: i64 = 1_785_542_400;
const AUG_15: i64 = 1_786_752_000;
const SEP_3: i64 = 1_788_393_600;

/// Committed one-minute `tokens` windows, one event each: (customer, event id, at, tokens),
/// under one batch.
async fn readings(db: &clickhouse::Client, batch: &str, rows: &[(String, String, i64, u32)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(customer, event, at, value)| {
            format!(
                "('{customer}', 'bot', '{event}', 'tokens', 'SUM', toDateTime({at}), 60, {ms}, \
                  ['kind', 'model'], ['input', 'gpt-4o'], \
                  '{{\"kind\":\"input\",\"model\":\"gpt-4o\"}}', toDecimal128('{value}', 9), '', \
                  0, '{batch}', 0, now())",
                ms = at * 1000,
            )
        })
        .collect();
    db.query(&format!(
        "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
         window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
         unique_value, stream_seq, batch_id, part, inserted_at) VALUES {}",
        values.join(", ")
    ))
    .execute()
    .await
    .expect("readings");
    tally_platform::testkit::fold_readings(db, batch).await;
}

/// More corrected customers than one widened read names ([`tally_rater::rating::usage::
/// WIDENED_CHUNK`]), with old events in June or in August: every one of them has its old
/// period re-priced whole (the reads are chunked, each chunk from its earliest customer's
/// periods), and an uncorrected customer's June is still not read again.
#[tokio::test]
async fn many_corrected_customers_are_read_in_chunks_each_whole() {
    let env = TestEnv::new("rater_reach_chunks").await;
    let db = env.db();
    let n = tally_rater::rating::usage::WIDENED_CHUNK + 20;
    let name = |i: usize| format!("c{i:03}");
    let month = |i: usize| {
        if i.is_multiple_of(2) {
            (JUN_1, JUN_15)
        } else {
            (AUG_1, AUG_15)
        }
    };
    let mut text = CATALOG.to_owned();
    for i in 0..n {
        text.push_str(&format!(
            "[[subscriptions]]\ncustomer = \"{}\"\nplan = \"pro\"\n",
            name(i)
        ));
    }
    let catalog = common::file_catalog(&text).expect("valid catalog");
    // each: 10 tokens and a 5-token event in its month; b: 200 tokens in June
    let mut rows = Vec::new();
    for i in 0..n {
        let at = month(i).1 + 60 * i64::try_from(i).expect("small");
        rows.push((name(i), format!("keep-{i}"), at, 10));
        rows.push((name(i), format!("void-{i}"), at, 5));
    }
    rows.push(("b".to_owned(), "b-june".to_owned(), JUN_15, 200));
    readings(&db, "old", &rows).await;
    common::rate_at(&db, &catalog, SEP_3, 100).await;
    let stored = |all: Vec<(String, i64)>, start: i64| -> Vec<(String, i64)> {
        all.into_iter()
            .filter(|(c, _)| c == "b" || (0..n).any(|i| name(i) == *c && month(i).0 == start))
            .collect()
    };
    let mut before = stored(common::period(&db, JUN_1).await, JUN_1);
    before.extend(stored(common::period(&db, AUG_1).await, AUG_1));
    assert_eq!(before.len(), n + 1);
    assert!(before
        .iter()
        .all(|(c, amount)| *amount == if c == "b" { 20_000 } else { 1_500 }));

    // b's June grows in storage without a correction; every c voids its 5-token event now
    readings(
        &db,
        "late",
        &[("b".to_owned(), "b-late".to_owned(), JUN_15 + 60, 50)],
    )
    .await;
    let events: Vec<(String, String, i64, u32)> = (0..n)
        .map(|i| {
            let at = month(i).1 + 60 * i64::try_from(i).expect("small");
            (name(i), format!("void-{i}"), at, 5)
        })
        .collect();
    voids(&db, &events, DEC_3 - 3_600).await;

    let report = common::rate_at(&db, &catalog, DEC_3, 5).await;
    let mut after = stored(common::period(&db, JUN_1).await, JUN_1);
    after.extend(stored(common::period(&db, AUG_1).await, AUG_1));
    assert_eq!(after.len(), n + 1);
    for (c, amount) in &after {
        let want = if c == "b" { 20_000 } else { 1_000 };
        assert_eq!(*amount, want, "{c}");
    }
    let old: usize = report
        .charges
        .iter()
        .filter(|c| c.period.start_ms < NOV_1 * 1000)
        .count();
    assert_eq!(
        old, n,
        "each corrected customer's own old period, nothing else"
    );
}
