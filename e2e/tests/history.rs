//! Issue 14: every periodic read costs what it asks for, never the whole history. A store
//! holding 5,000,000 committed events in the months before the period being rated (written
//! straight into the tables with `INSERT ... SELECT ... FROM system.numbers`, half of its days
//! sealed), and a small current period of known usage. Every read runs with
//! `max_memory_usage` = 256 MiB and `max_rows_to_read` = 1,000,000 (ClickHouse refuses a query
//! that would use more memory or read more rows, a fifth of the history): a sealing
//! pass, a rating pass, reconciliation, a charge's explanation and the portal's usage query
//! all succeed and return the exact usage of the period.

use std::time::Instant;

use chrono::{Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use tally_platform::testkit::{fold_readings, TestEnv};

const DAY: u32 = 86_400;
const HISTORY_EVENTS: u64 = 5_000_000;
const MEMORY_MAX: &str = "268435456";
/// Rows a single query may read: a fifth of the history.
const ROWS_MAX: &str = "1000000";

/// `n` readings of `llm_tokens` (one per event) from `first_day` over `days` days, for
/// `customers` customers and two models, in batches of at most 1,000,000 events, each batch
/// folded into its partials as the aggregator writes them.
async fn history(db: &clickhouse::Client, first_day: u32, days: u32, n: u64) {
    let chunk = 1_000_000u64;
    for (k, offset) in (0..n).step_by(chunk as usize).enumerate() {
        let rows = chunk.min(n - offset);
        let batch = format!("hist-{k}");
        db.query(&format!(
            "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
             window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
             unique_value, batch_id, part, inserted_at) \
             SELECT concat('hist-', toString(n % 1000)), 'bot', concat('h', toString(n)), \
             'llm_tokens', 'SUM', toDateTime(t - t % 60), 60, toInt64(t) * 1000, \
             ['model'], [if(n % 2 = 0, 'gpt-4o', 'gpt-4o-mini')], \
             if(n % 2 = 0, '{{\"model\":\"gpt-4o\"}}', '{{\"model\":\"gpt-4o-mini\"}}'), \
             toDecimal128(n % 1000 + 1, 9), '', '{batch}', 0, now() \
             FROM (SELECT number + {offset} AS n, \
                   toUInt32({first_day} + intDiv((number + {offset}) * {span}, {n})) AS t \
                   FROM system.numbers LIMIT {rows})",
            span = u64::from(days) * u64::from(DAY),
        ))
        .execute()
        .await
        .expect("history readings");
        fold_readings(db, &batch).await;
    }
}

/// Every read of the period is capped in memory and in rows: a query that scanned the
/// history (5M readings, about as many partials) would be refused, however little memory it
/// used while filtering.
fn capped(env: &TestEnv) -> clickhouse::Client {
    env.db()
        .with_setting("max_memory_usage", MEMORY_MAX)
        .with_setting("max_rows_to_read", ROWS_MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_reads_the_period_not_the_history() {
    let env = TestEnv::new("history").await;
    let db = env.db();
    let now = Utc::now();
    let period_start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap()
        .timestamp() as u32;
    // 5M events over 100 days ending 60 days before the period: outside every read of it
    let history_first = period_start - 160 * DAY;
    let started = Instant::now();
    history(&db, history_first, 100, HISTORY_EVENTS).await;
    let stored: u64 = db
        .query("SELECT count() FROM usage_meter_readings")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(stored, HISTORY_EVENTS);
    println!(
        "history of {stored} events written in {:?}",
        started.elapsed()
    );

    // a sealing pass over half of the history's days, each capped
    let capped = capped(&env);
    for d in 0..50 {
        let day = history_first + d * DAY;
        tally_aggregator::seal::seal_day(&capped, &format!("seal-{d}"), 0, day, 0)
            .await
            .unwrap_or_else(|e| panic!("sealing day {d} within {MEMORY_MAX} bytes: {e}"));
    }

    // the current period: three customers, known tokens, two windows each, a day ago
    let window = (now.timestamp() as u32 - DAY) / 60 * 60;
    let window = window.max(period_start);
    let current = [("cur-1", 1_000_000u64), ("cur-2", 2_500_000), ("cur-3", 7)];
    for (i, (customer, tokens)) in current.iter().enumerate() {
        db.query(&format!(
            "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
             window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
             unique_value, batch_id, part, inserted_at) VALUES \
             ('{customer}', 'bot', 'x{i}a', 'llm_tokens', 'SUM', toDateTime({window}), 60, {w}000, \
              ['model'], ['gpt-4o'], '{{\"model\":\"gpt-4o\"}}', toDecimal128({a}, 9), '', 'cur', 0, now()), \
             ('{customer}', 'bot', 'x{i}b', 'llm_tokens', 'SUM', toDateTime({w2}), 60, {w2}000, \
              ['model'], ['gpt-4o'], '{{\"model\":\"gpt-4o\"}}', toDecimal128({b}, 9), '', 'cur', 0, now())",
            w = window,
            w2 = window + 60,
            a = tokens / 2,
            b = tokens - tokens / 2,
        ))
        .execute()
        .await
        .expect("current readings");
    }
    fold_readings(&db, "cur").await;

    // rating
    let catalog = tally_e2e::catalog("nobody");
    let rater = tally_rater::RaterConfig {
        default_plan: Some("ai-standard".into()),
        ..Default::default()
    };
    let report = tally_rater::rate_once(&capped, &catalog, &rater, now.timestamp_millis())
        .await
        .unwrap_or_else(|e| panic!("rating within {MEMORY_MAX} bytes: {e}"));
    let mut charged: Vec<(String, Decimal, i64)> = report
        .charges
        .iter()
        .map(|c| (c.customer.clone(), c.quantity, c.amount_minor))
        .collect();
    charged.sort();
    let want: Vec<(String, Decimal, i64)> = current
        .iter()
        .map(|(c, t)| {
            // 0.000003 USD per token, rounded half away from zero to cents
            let cents = (t * 3 + 5_000) / 10_000;
            (c.to_string(), Decimal::from(*t), cents as i64)
        })
        .collect();
    assert_eq!(
        charged, want,
        "the period's exact usage, nothing of the history"
    );

    // reconciliation of the period
    let recon = tally_invoicer::reconcile::run(&capped, i64::from(period_start) * 1000)
        .await
        .unwrap_or_else(|e| panic!("reconciliation within {MEMORY_MAX} bytes: {e}"));
    assert!(
        recon.quantity_differences.is_empty(),
        "{:?}",
        recon.quantity_differences
    );
    assert!(recon.unreadable_usage.is_empty());

    // an explanation of one charge
    let charge = report
        .charges
        .iter()
        .find(|c| c.customer == "cur-2")
        .unwrap();
    let (_, windows) = tally_rater::rating::explain::load(&capped, &charge.charge_id)
        .await
        .unwrap_or_else(|e| panic!("explanation within {MEMORY_MAX} bytes: {e}"));
    assert_eq!(windows.len(), 2);
    assert_eq!(
        windows.iter().map(|w| w.quantity).sum::<Decimal>(),
        Decimal::from(2_500_000)
    );

    // the portal's usage page of the period
    let usage = tally_payments::portal::usage::load(
        &capped,
        "cur-1",
        i64::from(period_start) * 1000,
        now.timestamp_millis(),
    )
    .await
    .unwrap_or_else(|e| panic!("portal usage within {MEMORY_MAX} bytes: {e}"));
    assert_eq!(usage.by_agent_meter.len(), 1);
    assert_eq!(usage.by_agent_meter[0].quantity, Decimal::from(1_000_000));
    assert_eq!(usage.by_agent_meter[0].events, 2);

    // and a bounded read of the sealed stretch of the history is exact as well
    let plan = tally_platform::usage::plan(&capped, history_first)
        .await
        .unwrap();
    let req = tally_platform::usage::Request {
        from: history_first,
        to: history_first + 50 * DAY,
        scope: tally_platform::usage::Scope::Customer("hist-7"),
        meter: None,
        by_agent: false,
        resolution: tally_platform::usage::Resolution::Days,
        split: &[],
        months_except: None,
        through: None,
    };
    let rows = tally_platform::usage::read(&capped, &plan, &req)
        .await
        .unwrap();
    let mut totals = tally_platform::usage::Totals::default();
    for r in &rows {
        totals.add(r).unwrap();
    }
    let want: (u64, u64) = db
        .query(&format!(
            "SELECT count(), toUInt64(sum(value)) FROM usage_meter_readings \
             WHERE customer = 'hist-7' AND window_start < toDateTime({})",
            history_first + 50 * DAY
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(totals.events, want.0);
    assert_eq!(totals.quantity("SUM"), Some(Decimal::from(want.1)));
    println!("whole test {:?}", started.elapsed());
    env.cleanup().await;
}
