//! A mid-period cancellation gets its final invoice: the real rater cuts the cancelled
//! subscription's last period at the cancellation and prorates its fee and minimum, and the
//! real invoicer (over ClickHouse and NATS KV numbering) finalizes that invoice one grace
//! after the cancellation, while a running subscription's period is still a draft.
//!
//! Golden amounts by hand, in minor units. November 2026 has 30 days; plan `pro` (USD):
//! `tool_calls` flat 30.00, `llm_tokens` 0.002 per unit with a minimum of 10.00. `quits` is
//! cancelled on Nov 11 00:00 UTC (10/30 of November): fee 30 x 1/3 = 10.00 -> 1000, minimum
//! 10 x 1/3 = 3.333... -> 333; total 1333, its period ending Nov 11. A pass on Nov 13 with a
//! grace of one day finalizes it (Nov 11 + 1 day <= Nov 13; both lookbacks 10 days, so
//! October is closed already); `stays` owes 3000 + 1000 for
//! the whole of November, still a draft.

use tally_e2e::meters;
use tally_invoicer::numbering::Numbers;
use tally_invoicer::{invoice_pass, InvoicerConfig};
use tally_platform::testkit::TestEnv;
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::{Catalog, RaterConfig};

const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z, seconds
const DAY: i64 = 86_400;
const DEC_1: i64 = NOV_1 + 30 * DAY;

const CATALOG: &str = r#"
[[plans]]
id = "pro"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "flat", meter = "tool_calls", amount = "30" },
  { model = "per_unit", meter = "llm_tokens", unit_price = "0.002", minimum = "10" },
]
[[subscriptions]]
customer = "quits"
plan = "pro"
[[subscriptions]]
customer = "quits"
plan = "pro"
effective_from = "2026-11-11T00:00:00Z"
state = "cancelled"
[[subscriptions]]
customer = "stays"
plan = "pro"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_subscription_gets_its_final_prorated_invoice_after_one_grace() {
    let env = TestEnv::new("e2e_final_invoice").await;
    let db = env.db();
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
    }
    let f: F = toml::from_str(CATALOG).expect("catalog TOML");
    let catalog = Catalog::new(f.plans, f.subscriptions, &RaterConfig::default(), &meters())
        .expect("valid catalog");
    let now_ms = (NOV_1 + 12 * DAY) * 1000;
    let rater_cfg = RaterConfig {
        lookback_secs: 10 * DAY as u64,
        ..RaterConfig::default()
    };
    let rated = tally_rater::rate_once(&db, &catalog, &rater_cfg, now_ms)
        .await
        .expect("rating pass");
    assert!(rated.failed.is_empty());
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let numbers = Numbers::open(client, &format!("N{}", env.nats.stream))
        .await
        .expect("bucket");
    let cfg = InvoicerConfig {
        grace_secs: DAY as u64,
        lookback_secs: 10 * DAY as u64,
        ..InvoicerConfig::default()
    };
    let invoices = invoice_pass(&db, Some(&numbers), &cfg, now_ms)
        .await
        .expect("invoicing pass");
    let got: Vec<(String, i64, i64, &str, i64, bool)> = invoices
        .iter()
        .map(|i| {
            (
                i.customer.to_string(),
                i.period.start_ms / 1000,
                i.period.end_ms / 1000,
                i.status.as_str(),
                i.total_minor,
                i.number.is_some(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "quits".into(),
                NOV_1,
                NOV_1 + 10 * DAY,
                "finalized",
                1333,
                true
            ),
            ("stays".into(), NOV_1, DEC_1, "draft", 4000, false),
        ]
    );
    env.cleanup().await;
}
