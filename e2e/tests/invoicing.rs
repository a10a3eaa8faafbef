//! A month of usage through the real rater and invoicer over the real ClickHouse and NATS:
//! four subscriptions with different anchors and time zones (New York and Berlin periods
//! contain a DST change; Berlin is anchored on the 31st), two invoicers racing, late events
//! after finalization, and the next month's close. Asserts the period boundaries (local
//! midnight of the anchor day, half-open, in UTC), the invoice count, gapless numbers in
//! period-end order, exact amounts and tax, adjustments equal to the late usage, and a
//! reconciliation with no difference.

use std::collections::BTreeMap;

use chrono::DateTime;
use tally_e2e::meters;
use tally_invoicer::invoice::LineKind;
use tally_invoicer::numbering::Numbers;
use tally_invoicer::{invoice_pass, Invoice, InvoicerConfig};
use tally_platform::testkit::TestEnv;
use tally_rater::catalog::tax::{TaxRateSpec, TaxTable};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::{Catalog, RaterConfig};

const CATALOG: &str = r#"
[[plans]]
id = "month"
version = 1
currency = "USD"
effective_from = "2020-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "llm_tokens", unit_price = "0.001" }]
[[plans]]
id = "month-jpy"
version = 1
currency = "JPY"
effective_from = "2020-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "llm_tokens", unit_price = "0.1" }]
[[subscriptions]]
customer = "c-utc"
plan = "month"
[[subscriptions]]
customer = "c-ny"
plan = "month"
billing_anchor_day = 6
time_zone = "America/New_York"
[[subscriptions]]
customer = "c-31"
plan = "month"
billing_anchor_day = 31
time_zone = "Europe/Berlin"
tax_region = "DE"
[[subscriptions]]
customer = "c-tokyo"
plan = "month-jpy"
billing_anchor_day = 15
time_zone = "Asia/Tokyo"
[[tax_rates]]
region = "DE"
rate_percent = "19"
effective_from = "2020-01-01T00:00:00Z"
"#;

fn catalog() -> Catalog {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
        tax_rates: Vec<TaxRateSpec>,
    }
    let f: F = toml::from_str(CATALOG).expect("catalog TOML");
    Catalog::new(f.plans, f.subscriptions, &rater_cfg(), &meters())
        .expect("valid catalog")
        .with_taxes(TaxTable::new(f.tax_rates).expect("rates"))
        .expect("taxed subscriptions have rates")
}

fn rater_cfg() -> RaterConfig {
    RaterConfig {
        lookback_secs: 70 * 86_400,
        ..RaterConfig::default()
    }
}

fn invoicer_cfg() -> InvoicerConfig {
    InvoicerConfig {
        grace_secs: 86_400,
        lookback_secs: 70 * 86_400,
        ..InvoicerConfig::default()
    }
}

fn t(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .expect("rfc3339")
        .timestamp_millis()
}

/// One committed reading: (customer, event id, window start ms, tokens).
type Reading = (String, String, i64, i64);

/// Inserts committed readings as the aggregator would have at `committed_at` (RFC 3339).
async fn insert(db: &clickhouse::Client, batch: &str, readings: &[Reading], committed_at: &str) {
    let committed = t(committed_at) / 1000;
    let values: Vec<String> = readings
        .iter()
        .map(|(customer, id, ms, tokens)| {
            format!(
                "('{customer}', 'bot-1', '{id}', 'llm_tokens', 'SUM', toDateTime({}), 3600, {}, ['model', 'kind'], \
                 ['gpt-4o', 'output'], 'model=gpt-4o,kind=output', toDecimal128({tokens}, 9), '', '{batch}', \
                 toDateTime({committed}))",
                ms / 1000,
                ms + 1
            )
        })
        .collect();
    for chunk in values.chunks(2000) {
        db.query(&format!(
            "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, window_start, window_secs, \
             time_ms, group_names, group_values, group_key, value, unique_value, batch_id, inserted_at) VALUES {}",
            chunk.join(", ")
        ))
        .execute()
        .await
        .expect("insert readings");
    }
    tally_platform::testkit::fold_readings(db, batch).await;
}

/// The tokens of `customer` in `[start, end)`.
fn tokens(readings: &[Reading], customer: &str, start: i64, end: i64) -> i64 {
    readings
        .iter()
        .filter(|(c, _, ms, _)| c == customer && (start..end).contains(ms))
        .map(|r| r.3)
        .sum()
}

async fn open(env: &TestEnv, bucket: &str) -> Numbers {
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    Numbers::open(client, bucket).await.expect("bucket")
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct Stored {
    invoice_id: String,
    customer: String,
    status: String,
    number: String,
    period_start: u32,
    period_end: u32,
    total_minor: i64,
    tax_minor: i64,
    document: String,
}

async fn stored(db: &clickhouse::Client) -> Vec<Stored> {
    db.query(
        "SELECT invoice_id, customer, status, number, toUInt32(period_start), toUInt32(period_end), total_minor, \
         tax_minor, document FROM v_invoices ORDER BY customer, period_start",
    )
    .fetch_all()
    .await
    .expect("invoices")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_usage_closes_into_numbered_invoices_with_late_adjustments() {
    let env = TestEnv::new("e2e_invoicing").await;
    let db = env.db();
    let bucket = format!("N{}", env.nats.stream);
    let customers = ["c-utc", "c-ny", "c-31", "c-tokyo"];
    // every 6 hours from Oct 7 to Nov 9 18:00 UTC, plus readings on both sides of New York's
    // Nov 6 local midnight (04:00 UTC is 23:00 EST on Nov 5; 05:00 UTC is 00:00 EST Nov 6)
    let mut readings: Vec<Reading> = Vec::new();
    for c in customers {
        let mut ms = t("2026-10-07T00:00:00Z");
        let mut i = 0;
        while ms <= t("2026-11-09T18:00:00Z") {
            readings.push((c.into(), format!("{c}-{i}"), ms, 1_000 + (i % 7) * 10));
            ms += 6 * 3_600_000;
            i += 1;
        }
        readings.push((c.into(), format!("{c}-b1"), t("2026-11-06T04:00:00Z"), 70));
        readings.push((c.into(), format!("{c}-b2"), t("2026-11-06T05:00:00Z"), 90));
        readings.push((c.into(), format!("{c}-b3"), t("2026-10-30T22:00:00Z"), 110));
        readings.push((c.into(), format!("{c}-b4"), t("2026-10-30T23:00:00Z"), 130));
    }
    insert(&db, "b-month", &readings, "2026-11-10T00:00:00Z").await;

    // periods: local midnight of the anchor day in the subscription's zone, half-open
    let periods: BTreeMap<&str, [(i64, i64); 2]> = [
        (
            "c-utc",
            [
                (t("2026-10-01T00:00:00Z"), t("2026-11-01T00:00:00Z")),
                (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z")),
            ],
        ),
        // EDT (-4) at the start, EST (-5) at the end: DST ended on Nov 1
        (
            "c-ny",
            [
                (t("2026-10-06T04:00:00Z"), t("2026-11-06T05:00:00Z")),
                (t("2026-11-06T05:00:00Z"), t("2026-12-06T05:00:00Z")),
            ],
        ),
        // anchor 31: Sep 30 (last day), Oct 31, Nov 30; CEST (+2) to CET (+1) on Oct 25
        (
            "c-31",
            [
                (t("2026-09-29T22:00:00Z"), t("2026-10-30T23:00:00Z")),
                (t("2026-10-30T23:00:00Z"), t("2026-11-29T23:00:00Z")),
            ],
        ),
        (
            "c-tokyo",
            [
                (t("2026-09-14T15:00:00Z"), t("2026-10-14T15:00:00Z")),
                (t("2026-10-14T15:00:00Z"), t("2026-11-14T15:00:00Z")),
            ],
        ),
    ]
    .into_iter()
    .collect();
    // USD 0.001 and JPY 0.1 per token: tokens / 10 minor units either way (exact); DE 19 %
    let amount = |c: &str, (s, e): (i64, i64)| tokens(&readings, c, s, e) / 10;
    let tax = |c: &str, minor: i64| {
        if c == "c-31" {
            (minor * 19 + 50) / 100
        } else {
            0
        }
    };

    // --- close October: rate, then two invoicers at once -------------------------------------
    let now = t("2026-11-10T12:00:00Z");
    let report = tally_rater::rate_once(&db, &catalog(), &rater_cfg(), now)
        .await
        .expect("rating");
    assert!(!report.charges.is_empty());
    let (a, b) = (open(&env, &bucket).await, open(&env, &bucket).await);
    let cfg = invoicer_cfg();
    let (ra, rb) = tokio::join!(
        invoice_pass(&db, Some(&a), &cfg, now),
        invoice_pass(&db, Some(&b), &cfg, now + 3),
    );
    ra.expect("invoicer a");
    rb.expect("invoicer b");
    let invoices = stored(&db).await;
    assert_eq!(
        invoices.len(),
        8,
        "one invoice per subscription and period: {invoices:#?}"
    );
    // finalized in period-end order: Tokyo (Oct 14), Berlin (Oct 30), UTC (Nov 1), New York (Nov 6)
    let want_numbers = [("c-tokyo", 1), ("c-31", 2), ("c-utc", 3), ("c-ny", 4)];
    for (c, n) in want_numbers {
        let [first, second] = periods[c];
        let fin = invoices
            .iter()
            .find(|i| i.customer == c && i.status == "finalized")
            .unwrap_or_else(|| panic!("{c} has a finalized invoice"));
        assert_eq!(
            (
                i64::from(fin.period_start) * 1000,
                i64::from(fin.period_end) * 1000
            ),
            first,
            "{c}: period boundaries"
        );
        assert_eq!(fin.number, format!("INV-{n:06}"), "{c}");
        let net = amount(c, first);
        assert!(net > 0);
        assert_eq!(
            (fin.total_minor, fin.tax_minor),
            (net + tax(c, net), tax(c, net)),
            "{c}"
        );
        let draft = invoices
            .iter()
            .find(|i| i.customer == c && i.status == "draft")
            .unwrap_or_else(|| panic!("{c} has a draft"));
        assert_eq!(
            (
                i64::from(draft.period_start) * 1000,
                i64::from(draft.period_end) * 1000
            ),
            second
        );
        assert_eq!(draft.number, "");
        let net = amount(c, second);
        assert_eq!(draft.total_minor, net + tax(c, net), "{c} draft");
    }
    // the boundary readings fell on the right side of New York's local midnight
    let ny_oct = amount("c-ny", periods["c-ny"][0]);
    assert_eq!(
        tokens(
            &readings,
            "c-ny",
            t("2026-11-06T04:00:00Z"),
            t("2026-11-06T05:00:00Z")
        ),
        70
    );
    let oct_utc: Invoice = serde_json::from_str(
        &invoices
            .iter()
            .find(|i| i.customer == "c-utc" && i.status == "finalized")
            .expect("utc")
            .document,
    )
    .expect("document");

    // --- late events for the finalized UTC October, after finalization -----------------------
    let late: Vec<Reading> = vec![
        (
            "c-utc".into(),
            "late-1".into(),
            t("2026-10-20T03:00:00Z"),
            4_000,
        ),
        (
            "c-utc".into(),
            "late-2".into(),
            t("2026-10-31T23:00:00Z"),
            1_000,
        ),
    ];
    insert(&db, "b-late", &late, "2026-11-10T12:30:00Z").await;
    let later = now + 3_600_000;
    tally_rater::rate_once(&db, &catalog(), &rater_cfg(), later)
        .await
        .expect("rating again");
    let pass = invoice_pass(&db, Some(&a), &cfg, later)
        .await
        .expect("pass");
    let nov_utc = pass
        .iter()
        .find(|i| i.customer == "c-utc")
        .expect("the UTC November draft");
    let adj: Vec<_> = nov_utc
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::Adjustment)
        .collect();
    assert_eq!(adj.len(), 1, "{:#?}", nov_utc.lines);
    assert_eq!(
        adj[0].amount_minor, 500,
        "adjustment equals the late usage (5000 tokens)"
    );
    assert_eq!(
        adj[0].adjusts_invoice_id.as_deref(),
        Some(oct_utc.invoice_id.as_str())
    );
    // the adjustment line links to the late events
    let lineage = tally_invoicer::lineage::of_line(&db, &nov_utc.invoice_id, adj[0])
        .await
        .expect("lineage")
        .expect("charge known");
    assert_eq!(lineage.late_event_ids, vec!["late-1", "late-2"]);
    assert!(
        lineage.events.len() > 100,
        "the corrected period's events are listed too"
    );
    let now_oct: Vec<Stored> = stored(&db).await;
    let still: Invoice = serde_json::from_str(
        &now_oct
            .iter()
            .find(|i| i.invoice_id == oct_utc.invoice_id)
            .expect("october")
            .document,
    )
    .expect("document");
    assert_eq!(still, oct_utc, "the finalized invoice never changes");

    // --- close November (New York's period is still open) -------------------------------------
    let dec = t("2026-12-03T00:00:00Z");
    tally_rater::rate_once(&db, &catalog(), &rater_cfg(), dec)
        .await
        .expect("rating december");
    invoice_pass(&db, Some(&b), &cfg, dec).await.expect("pass");
    let all = stored(&db).await;
    assert_eq!(all.len(), 8);
    let mut numbers: Vec<(String, String)> = all
        .iter()
        .filter(|i| !i.number.is_empty())
        .map(|i| (i.number.clone(), i.customer.clone()))
        .collect();
    numbers.sort();
    let want: Vec<(String, String)> = [
        "c-tokyo", "c-31", "c-utc", "c-ny", "c-tokyo", "c-31", "c-utc",
    ]
    .iter()
    .enumerate()
    .map(|(i, c)| (format!("INV-{:06}", i + 1), c.to_string()))
    .collect();
    assert_eq!(numbers, want, "gapless, in period-end order");
    let nov = all
        .iter()
        .find(|i| i.customer == "c-utc" && i.period_start as i64 * 1000 == periods["c-utc"][1].0)
        .expect("utc november");
    assert_eq!(nov.status, "finalized");
    assert_eq!(nov.total_minor, amount("c-utc", periods["c-utc"][1]) + 500);
    assert_eq!(
        all.iter()
            .find(|i| i.customer == "c-ny" && i.status == "draft")
            .map(|i| i.total_minor),
        Some(amount("c-ny", periods["c-ny"][1]))
    );
    assert!(ny_oct > 0);

    // --- reconciliation: usage = charges = invoice lines (+ adjustments) ----------------------
    let r = tally_invoicer::reconcile::run(&db, t("2026-09-01T00:00:00Z"))
        .await
        .expect("reconcile");
    assert!(r.invoices_checked >= 8);
    assert_eq!(r.difference_minor, 0, "{r:#?}");
    assert!(r.quantity_differences.is_empty(), "{r:#?}");

    if let Ok(client) = async_nats::connect(&env.nats.url).await {
        let _ = async_nats::jetstream::new(client)
            .delete_key_value(&bucket)
            .await;
    }
    env.cleanup().await;
}
