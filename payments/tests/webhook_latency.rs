//! Measures webhook processing over the real HTTP endpoint and ClickHouse: 200 invoices paid
//! by 200 signed `payment_intent.succeeded` deliveries, one at a time (50 in debug builds, to
//! keep `cargo test` short); prints p50/p90/p99/max latency and the rate, and checks every
//! invoice ended paid and the ledger balanced.
//! Run: `cargo test -p tally-payments --release --test webhook_latency -- --nocapture`.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tally_platform::testkit::TestEnv;

const INVOICES: usize = if cfg!(debug_assertions) { 50 } else { 200 };

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_webhooks_one_at_a_time_latency() {
    let env = TestEnv::new("webhook_latency").await;
    let db = env.db();
    let mut ids = Vec::with_capacity(INVOICES);
    for i in 0..INVOICES {
        let customer = format!("cust-{i:03}");
        let inv = past_invoice(&db, &customer, "USD", &[("tokens", 1_000 + i as i64, 0)]).await;
        ids.push((inv.invoice_id, inv.amount_due_minor));
    }
    let server = start(db.clone(), wall_ms).await;
    let mut took = Vec::with_capacity(INVOICES);
    let started = Instant::now();
    for (i, (id, due)) in ids.iter().enumerate() {
        let now = wall_ms() / 1000;
        let body = stripe_event(
            &format!("evt_lat_{i}"),
            "payment_intent.succeeded",
            payment_intent(&format!("pi_lat_{i}"), id, *due, "usd"),
            now,
        );
        let t = Instant::now();
        let (status, reply) = post_webhook(server.addr, &body, WEBHOOK_SECRET, now).await;
        took.push(t.elapsed());
        assert_eq!(
            (status.as_u16(), reply["outcome"].as_str()),
            (200, Some("paid")),
            "{reply}"
        );
    }
    let total = started.elapsed();
    took.sort();
    println!(
        "webhooks: {INVOICES} payments in {:.2} s ({:.1}/s, one at a time); latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        total.as_secs_f64(),
        INVOICES as f64 / total.as_secs_f64(),
        pct(&took, 50).as_secs_f64() * 1e3,
        pct(&took, 90).as_secs_f64() * 1e3,
        pct(&took, 99).as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3,
    );
    let paid: u64 = db
        .query("SELECT count() FROM v_invoice_transitions WHERE to_status = 'paid'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(paid, INVOICES as u64);
    let tb = tally_payments::store::trial_balance(&db).await.unwrap();
    assert!(tb.is_balanced(), "{}", tb.render());
    drop(server);
    env.cleanup().await;
}
