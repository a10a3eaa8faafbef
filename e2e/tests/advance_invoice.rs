//! A fee billed in advance on real invoices: the real rater charges each part of a period
//! at its start, and the real invoicer (over ClickHouse and NATS KV numbering) finalizes it
//! on the invoice finalized at that start, one grace later: the previous period's invoice
//! for a part starting with its period, an invoice of its own for a part starting inside
//! it. A cancellation recorded later lowers the same charge, and the invoicer credits the
//! unused part with a credit note against the invoice that charged it.
//!
//! Golden amounts by hand, in minor units. November 2026 has 30 days; plan `adv` (USD):
//! `tool_calls` flat 30.00 billed in advance, `llm_tokens` 0.002 per unit in arrears. Grace
//! one day, lookbacks 10 days.
//! - `quits` (from Nov 1): on Nov 2 its November fee, 3000, is on the finalized invoice of
//!   Oct 1 - Nov 1 (alone: no October usage). Cancelled on Nov 21 (recorded then): on Nov 22
//!   the fee is 30 x 20/30 = 2000, so a credit note of 3000 - 2000 = 1000 against that
//!   invoice; its final invoice, Nov 1 - Nov 21, bills its 2500 tokens, 2500 x 0.002 = 500,
//!   and no fee.
//! - `late` (from Nov 11): on Nov 12 the rest of November, 30 x 20/30 = 2000, is a finalized
//!   invoice of its own (period Nov 11 - Nov 11); its 5000 tokens (1000) wait for November's
//!   invoice, which on Dec 2 is final with them and December's fee: 1000 + 3000 = 4000. Its
//!   12 tool calls (the fee's meter) bill nothing more, and reconciliation finds no
//!   difference.

use tally_e2e::meters;
use tally_invoicer::numbering::Numbers;
use tally_invoicer::{invoice_pass, InvoicerConfig};
use tally_platform::testkit::TestEnv;
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::{Catalog, RaterConfig};

const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z, seconds
const DAY: i64 = 86_400;
const OCT_1: i64 = NOV_1 - 31 * DAY;
const NOV_11: i64 = NOV_1 + 10 * DAY;
const NOV_21: i64 = NOV_1 + 20 * DAY;
const DEC_1: i64 = NOV_1 + 30 * DAY;

const CATALOG: &str = r#"
[[plans]]
id = "adv"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "tool_calls", amount = "30", billing = "in_advance" },
  { model = "per_unit", meter = "llm_tokens", unit_price = "0.002" },
]
[[subscriptions]]
customer = "quits"
plan = "adv"
effective_from = "2026-11-01T00:00:00Z"
[[subscriptions]]
customer = "late"
plan = "adv"
effective_from = "2026-11-11T00:00:00Z"
"#;

const CANCELLED: &str = r#"
[[subscriptions]]
customer = "quits"
plan = "adv"
effective_from = "2026-11-21T00:00:00Z"
state = "cancelled"
"#;

fn catalog(text: &str) -> Catalog {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
    }
    let f: F = toml::from_str(text).expect("catalog TOML");
    Catalog::new(f.plans, f.subscriptions, &RaterConfig::default(), &meters())
        .expect("valid catalog")
}

/// One committed window of `llm_tokens` for `customer` at `at` (seconds).
async fn tokens(db: &clickhouse::Client, customer: &str, at: i64, value: &str, batch: &str) {
    let groups = [("kind", "input"), ("model", "gpt-4o")];
    tally_platform::testkit::commit_window(
        db,
        customer,
        "llm_tokens",
        "SUM",
        at,
        &groups,
        value,
        batch,
    )
    .await;
}

/// (customer, period start, period end, status, total, numbered) of a pass's invoices.
type Got = (String, i64, i64, String, i64, bool);

async fn pass(
    db: &clickhouse::Client,
    numbers: &Numbers,
    catalog: &Catalog,
    now: i64,
) -> (Vec<Got>, Vec<tally_invoicer::invoice::Invoice>) {
    let rater_cfg = RaterConfig {
        lookback_secs: 10 * DAY as u64,
        ..RaterConfig::default()
    };
    let rated = tally_rater::rate_once(db, catalog, &rater_cfg, now * 1000)
        .await
        .expect("rating pass");
    assert!(rated.failed.is_empty());
    let cfg = InvoicerConfig {
        grace_secs: DAY as u64,
        lookback_secs: 10 * DAY as u64,
        ..InvoicerConfig::default()
    };
    let invoices = invoice_pass(db, Some(numbers), &cfg, now * 1000)
        .await
        .expect("invoicing pass");
    let got = invoices
        .iter()
        .map(|i| {
            (
                i.customer.to_string(),
                i.period.start_ms / 1000,
                i.period.end_ms / 1000,
                i.status.as_str().to_owned(),
                i.total_minor,
                i.number.is_some(),
            )
        })
        .collect();
    (got, invoices)
}

fn inv(customer: &str, from: i64, to: i64, status: &str, total: i64) -> Got {
    (
        customer.into(),
        from,
        to,
        status.into(),
        total,
        status == "finalized",
    )
}

#[derive(Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
struct Note {
    invoice_id: String,
    customer: String,
    amount_minor: i64,
    reason: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_advance_fee_is_on_the_invoice_finalized_at_its_period_start_and_credited_on_cancellation(
) {
    let env = TestEnv::new("e2e_advance_invoice").await;
    let db = env.db();
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let numbers = Numbers::open(client, &format!("N{}", env.nats.stream))
        .await
        .expect("bucket");
    let running = catalog(CATALOG);
    tokens(&db, "quits", NOV_1 + 4 * DAY, "2500", "q1").await;
    tokens(&db, "late", NOV_11 + DAY / 2, "5000", "l1").await;
    // late's own tool calls: usage of the fee's meter bills nothing more
    let search = [("tool", "search")];
    tally_platform::testkit::commit_window(
        &db,
        "late",
        "tool_calls",
        "COUNT",
        NOV_11 + DAY,
        &search,
        "12",
        "l2",
    )
    .await;

    // November 2nd: quits's November fee is on October's invoice, final one grace after
    // November began (its usage, on the 5th, is still to come)
    let (got, invoices) = pass(&db, &numbers, &running, NOV_1 + DAY).await;
    assert_eq!(got, vec![inv("quits", OCT_1, NOV_1, "finalized", 3000)]);
    let charged_on = invoices[0].invoice_id.clone();
    let fee = &invoices[0].lines;
    let fee_id = fee[0].charge_id.clone();
    assert_eq!(fee.len(), 1);
    assert_eq!(
        (
            fee[0].meter.as_str(),
            fee[0].price_model.as_str(),
            fee[0].amount_minor
        ),
        ("tool_calls", "flat", 3000)
    );

    // November 12th: late's rest of November is an invoice of its own, final one grace
    // after its start
    let (got, _) = pass(&db, &numbers, &running, NOV_11 + DAY).await;
    assert_eq!(
        got,
        vec![
            inv("late", NOV_1, DEC_1, "draft", 1000),
            inv("late", NOV_11, NOV_11, "finalized", 2000),
            inv("quits", NOV_1, DEC_1, "draft", 500),
        ]
    );

    // November 22nd, the cancellation on the 21st recorded: the fee covers 20 of 30 days,
    // the unused 1000 is a credit note against the invoice that charged it; the final
    // invoice (Nov 1 - 21) bills the usage and no fee
    let cancelled = catalog(&format!("{CATALOG}{CANCELLED}"));
    let (got, _) = pass(&db, &numbers, &cancelled, NOV_21 + DAY).await;
    assert_eq!(
        got,
        vec![
            inv("late", NOV_1, DEC_1, "draft", 1000),
            inv("quits", NOV_1, NOV_21, "finalized", 500),
        ]
    );
    let notes: Vec<Note> = db
        .query(
            "SELECT invoice_id, customer, amount_minor, reason FROM v_credit_notes \
             ORDER BY customer, invoice_id",
        )
        .fetch_all()
        .await
        .expect("credit notes");
    assert_eq!(
        notes,
        vec![Note {
            invoice_id: charged_on,
            customer: "quits".into(),
            amount_minor: 1000,
            reason: format!(
                "subscription changed: unused part of fee {fee_id} of tool_calls credited"
            ),
        }]
    );

    // December 2nd: late's November invoice is final with its usage and December's fee
    let (got, invoices) = pass(&db, &numbers, &cancelled, DEC_1 + DAY).await;
    assert_eq!(got, vec![inv("late", NOV_1, DEC_1, "finalized", 4000)]);
    let mut lines: Vec<(&str, i64)> = invoices[0]
        .lines
        .iter()
        .map(|l| (l.meter.as_str(), l.amount_minor))
        .collect();
    lines.sort();
    assert_eq!(lines, vec![("llm_tokens", 1000), ("tool_calls", 3000)]);

    // reconciliation: usage, charges, invoices and the credit note agree; the 12 tool calls
    // are not a difference against the fee charged in advance on November's invoice
    let r = tally_invoicer::reconcile::run(&db, (OCT_1 - DAY) * 1000)
        .await
        .expect("reconcile");
    assert_eq!(r.difference_minor, 0, "{r:#?}");
    assert!(r.quantity_differences.is_empty(), "{r:#?}");
    env.cleanup().await;
}
