//! Rating over the real servers with an AI price book, a coupon and tax: events go through
//! NATS and the aggregator into `v_usage`; two raters run at once; the charges are the
//! hand-computed ones, each exactly once, and every charge's explanation balances against the
//! committed usage windows it came from.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use tally_domain::{AgentId, CustomerId, EventId};
use tally_e2e::{aggregator_config, meters, start_aggregator, wait_drained};
use tally_ingest::{OutgoingEvent, Publisher};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_rater::catalog::tax::{TaxRateSpec, TaxTable};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::rating::explain;
use tally_rater::{Catalog, RaterConfig};

const CATALOG: &str = r#"
[[plans]]
id = "book"
version = 1
currency = "USD"
effective_from = "2020-01-01T00:00:00Z"
prices = [
  { model = "dimensional", meter = "llm_tokens", dimensions = ["model", "kind"], default_unit_price = "0.000003",
    rates = [{ values = ["gpt-4o", "input"], unit_price = "0.0000025" }, { values = ["gpt-4o", "output"], unit_price = "0.00001" }] },
  { model = "per_unit", meter = "tool_calls", unit_price = "0.01", free_units = "100" },
]
[[subscriptions]]
customer = "CUSTOMER"
plan = "book"
tax_region = "DE"
coupons = [{ id = "TEN", percent_off = "10", starts = "2020-01-01T00:00:00Z", duration = "forever" }]
[[tax_rates]]
region = "DE"
rate_percent = "19"
effective_from = "2020-01-01T00:00:00Z"
"#;

fn catalog(customer: &str) -> Catalog {
    #[derive(serde::Deserialize)]
    struct F {
        plans: Vec<PlanSpec>,
        subscriptions: Vec<SubscriptionSpec>,
        tax_rates: Vec<TaxRateSpec>,
    }
    let f: F = toml::from_str(&CATALOG.replace("CUSTOMER", customer)).expect("catalog TOML");
    Catalog::new(f.plans, f.subscriptions, &RaterConfig::default(), &meters())
        .expect("valid catalog")
        .with_taxes(TaxTable::new(f.tax_rates).expect("rates"))
        .expect("taxed subscriptions have rates")
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct ChargeRow {
    charge_id: String,
    group_key: String,
    amount_before_discounts_minor: i64,
    amount_minor: i64,
    tax_minor: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_raters_at_once_price_a_price_book_exactly_once_and_every_charge_explains() {
    let env = TestEnv::new("e2e_rating").await;
    let stop = Shutdown::new();
    let aggregator = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    let customer = format!("pb{}", std::process::id());
    let at = Utc::now() - chrono::Duration::seconds(30);
    let mut events = Vec::new();
    let mut push = |event_type: &str, data: serde_json::Value| {
        events.push(OutgoingEvent {
            id: EventId::new(format!("e{}", events.len())).expect("id"),
            customer: CustomerId::new(customer.clone()).expect("customer"),
            agent: AgentId::new("bot-1").expect("agent"),
            event_type: event_type.into(),
            time: at,
            data,
            hold_id: None,
        });
    };
    for _ in 0..3 {
        push(
            "llm.tokens",
            serde_json::json!({"tokens": 1_000_000, "model": "gpt-4o", "kind": "input"}),
        );
    }
    for _ in 0..2 {
        push(
            "llm.tokens",
            serde_json::json!({"tokens": 250_000, "model": "gpt-4o", "kind": "output"}),
        );
    }
    push(
        "llm.tokens",
        serde_json::json!({"tokens": 1_000, "model": "small", "kind": "input"}),
    );
    for _ in 0..150 {
        push("tool.call", serde_json::json!({"tool": "search"}));
    }
    let client = async_nats::connect(&env.nats.url)
        .await
        .expect("NATS answers");
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .expect("streams");
    let mut publisher = Publisher::new(js, &env.nats.subject_prefix, 64);
    for e in &events {
        publisher.publish(e).await.expect("publish");
    }
    publisher.flush().await.expect("acks");
    wait_drained(&env, "aggregator", Duration::from_secs(60)).await;

    let db = env.db();
    let c = catalog(&customer);
    let cfg = RaterConfig::default();
    let now = Utc::now().timestamp_millis();
    let (a, b) = tokio::join!(
        tally_rater::rate_once(&db, &c, &cfg, now),
        tally_rater::rate_once(&db, &c, &cfg, now)
    );
    assert_eq!(a.expect("rater a").charges, b.expect("rater b").charges);

    let rows: Vec<ChargeRow> = db
        .query(
            "SELECT charge_id, group_key, amount_before_discounts_minor, amount_minor, tax_minor \
             FROM v_charges ORDER BY meter, group_key",
        )
        .fetch_all()
        .await
        .expect("charges");
    let got: BTreeMap<&str, (i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.group_key.as_str(),
                (r.amount_before_discounts_minor, r.amount_minor, r.tax_minor),
            )
        })
        .collect();
    let want = BTreeMap::from([
        // 3,000,000 x 0.0000025 = 7.50; -10% = 6.75; 19% = 1.2825 -> 1.28
        (r#"{"kind":"input","model":"gpt-4o"}"#, (750, 675, 128)),
        // 500,000 x 0.00001 = 5.00; -10% = 4.50; 19% = 0.855 -> 0.86
        (r#"{"kind":"output","model":"gpt-4o"}"#, (500, 450, 86)),
        // 1,000 x 0.000003 (the default rate) = 0.003 -> 0.00; -10% = 0.0027 -> 0.00
        (r#"{"kind":"input","model":"small"}"#, (0, 0, 0)),
        // tool calls: 150 - 100 free = 50 x 0.01 = 0.50; -10% = 0.45; 19% = 0.0855 -> 0.09
        ("{}", (50, 45, 9)),
    ]);
    assert_eq!(got, want, "one charge per group, each exactly once");
    assert_eq!(rows.len(), 4, "two raters at once wrote no extra charge");

    for r in &rows {
        let (stored, windows) = explain::load(&db, &r.charge_id).await.expect("explainable");
        let sums = explain::windows_sum_to_quantity(&meters(), &stored.meter);
        let e = explain::explain(&stored, windows, sums).expect("readable");
        assert!(e.balanced, "{}", e.lines.join("\n"));
    }

    stop.cancel();
    aggregator
        .await
        .expect("joins")
        .expect("aggregator stops cleanly");
    env.cleanup().await;
}
