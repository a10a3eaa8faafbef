//! The whole path over the real servers: synthetic agents publish 10,000 events (3 customers,
//! 2 agents each, 2 meters, out of order) plus 500 re-sends of earlier ids (half inside
//! JetStream's duplicate window, half after it); the aggregator commits them; the rater and
//! the invoicer price and invoice them. Usage totals and invoice amounts are compared with
//! values this test computes on its own, in integer arithmetic, from the events it sent.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tally_e2e::{aggregator_config, catalog, start_aggregator, wait_drained};
use tally_ingest::synthetic::Fleet;
use tally_ingest::{OutgoingEvent, Publisher};
use tally_invoicer::{InvoicerConfig, Status};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_rater::RaterConfig;

const EVENTS: usize = 10_000;
const RESENDS: usize = 500;

/// What the test expects, per (customer, agent, meter): the summed quantity.
type Usage = BTreeMap<(String, String, String), u64>;

fn expected_usage(events: &[OutgoingEvent]) -> Usage {
    let mut usage = Usage::new();
    for e in events {
        let (meter, qty) = match e.event_type.as_str() {
            "llm.tokens" => (
                "llm_tokens",
                e.data["tokens"].as_u64().expect("tokens are integers"),
            ),
            _ => ("tool_calls", 1),
        };
        *usage
            .entry((
                e.customer.to_string(),
                e.agent.to_string(),
                meter.to_owned(),
            ))
            .or_default() += qty;
    }
    usage
}

/// Half-up rounding of `num / den` for non-negative integers.
fn round_half_up(num: u64, den: u64) -> u64 {
    (2 * num + den) / (2 * den)
}

/// Minor units a customer owes for `tokens` and `calls`, computed by hand from the plans.
fn expected_minor(yen: bool, tokens: u64, calls: u64) -> i64 {
    let (token_minor, tool_minor) = if yen {
        // 0.0004 JPY per token; tool calls 3 JPY up to 500, then 1.5 JPY (in half-yen).
        let half_yen = 6 * calls.min(500) + 3 * calls.saturating_sub(500);
        (
            round_half_up(tokens * 4, 10_000),
            round_half_up(half_yen, 2),
        )
    } else {
        // 0.000003 USD per token = 3 micro-dollars; tiers in tenths of a cent.
        let tenths = 20 * calls.min(100)
            + 15 * (calls.min(1000).saturating_sub(100))
            + 10 * calls.saturating_sub(1000);
        (round_half_up(tokens * 3, 10_000), round_half_up(tenths, 10))
    };
    (token_minor + tool_minor) as i64
}

fn month_start(t: DateTime<Utc>) -> String {
    Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
        .single()
        .expect("first of month")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(clickhouse::Row, Deserialize)]
struct UsageTotal {
    customer: String,
    agent: String,
    meter: String,
    quantity: String,
    events: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_with_resends_bill_exactly() {
    let mut env = TestEnv::new("e2e_pipeline").await;
    env.nats.duplicate_window_secs = 1;
    let stop = Shutdown::new();
    let aggregator = start_aggregator(&env, aggregator_config(), stop.clone()).await;

    // 10,000 distinct events, event times spread over the last 10 minutes, sent in random order.
    let run = format!("e2e{}", std::process::id());
    let mut fleet = Fleet::new("cust", 3, 2, &run, 42).expect("fleet");
    let mut rng = StdRng::seed_from_u64(7);
    let now = Utc::now();
    let mut events: Vec<OutgoingEvent> = (0..EVENTS)
        .map(|_| {
            fleet.next_event(now - chrono::Duration::milliseconds(rng.random_range(0..600_000)))
        })
        .collect();
    events.shuffle(&mut rng);
    let expected = expected_usage(&events);

    let client = async_nats::connect(&env.nats.url)
        .await
        .expect("NATS answers");
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .expect("streams");
    let mut publisher = Publisher::new(js, &env.nats.subject_prefix, 256);
    for (i, e) in events.iter().enumerate() {
        publisher.publish(e).await.expect("publish");
        if i % 40 == 0 && i > 0 {
            // a retrying agent, inside JetStream's duplicate window
            publisher
                .publish(&events[rng.random_range(0..i)])
                .await
                .expect("re-publish");
        }
    }
    publisher.flush().await.expect("acks");
    // after the duplicate window: only the aggregator's dedup can catch these
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late_resends = RESENDS - EVENTS / 40 + 1;
    for _ in 0..late_resends {
        publisher
            .publish(&events[rng.random_range(0..EVENTS)])
            .await
            .expect("late re-publish");
    }
    let stats = publisher.flush().await.expect("acks");
    assert_eq!(stats.stored + stats.duplicates, (EVENTS + RESENDS) as u64);
    assert!(
        stats.stored > EVENTS as u64,
        "some re-sends must reach the aggregator: {stats:?}"
    );

    wait_drained(&env, "aggregator", Duration::from_secs(120)).await;

    // usage, read through the public view
    let db = env.db();
    let rows: Vec<UsageTotal> = db
        .query(
            "SELECT customer, agent, meter, toString(sum(quantity)), sum(event_count) FROM v_usage \
             GROUP BY customer, agent, meter ORDER BY customer, agent, meter",
        )
        .fetch_all()
        .await
        .expect("usage query");
    let got: Usage = rows
        .iter()
        .map(|r| {
            (
                (r.customer.clone(), r.agent.clone(), r.meter.clone()),
                r.quantity
                    .parse::<rust_decimal::Decimal>()
                    .unwrap()
                    .try_into()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected, "usage per customer, agent and meter");
    assert_eq!(
        rows.iter().map(|r| r.events).sum::<u64>(),
        EVENTS as u64,
        "each event counted once"
    );
    assert_eq!(
        expected
            .keys()
            .map(|k| &k.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
    assert_eq!(
        expected
            .keys()
            .map(|k| (&k.0, &k.1))
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        6
    );

    // rate and invoice, twice: the second pass must change nothing
    let catalog = catalog("cust-3");
    let rater = RaterConfig::default();
    let invoicer = InvoicerConfig::default();
    let at = Utc::now().timestamp_millis();
    tally_rater::rate_once(&db, &catalog, &rater, at)
        .await
        .expect("rating");
    let first = tally_invoicer::invoice_once(&db, &invoicer, at)
        .await
        .expect("invoicing");
    tally_rater::rate_once(&db, &catalog, &rater, at + 1000)
        .await
        .expect("rating again");
    let second = tally_invoicer::invoice_once(&db, &invoicer, at + 1000)
        .await
        .expect("invoicing again");

    let mut want: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for e in &events {
        let entry = want
            .entry((e.customer.to_string(), month_start(e.time)))
            .or_default();
        match e.event_type.as_str() {
            "llm.tokens" => entry.0 += e.data["tokens"].as_u64().unwrap(),
            _ => entry.1 += 1,
        }
    }
    assert_eq!(
        first.len(),
        want.len(),
        "one invoice per customer and period"
    );
    for inv in &first {
        let (tokens, calls) = want[&(inv.customer.clone(), inv.period_start.clone())];
        let yen = inv.customer == "cust-3";
        assert_eq!(inv.currency, if yen { "JPY" } else { "USD" });
        assert_eq!(
            inv.total_minor,
            expected_minor(yen, tokens, calls),
            "invoice total of {}",
            inv.customer
        );
        assert_eq!(inv.lines.len(), 2);
        assert_eq!(
            inv.lines.iter().map(|l| l.amount_minor).sum::<i64>(),
            inv.total_minor
        );
        assert_eq!(inv.status, Status::Draft, "the period is still open");
        assert_eq!(
            (inv.plan_id.as_str(), inv.plan_version),
            (if yen { "ai-yen" } else { "ai-standard" }, 1)
        );
    }
    let totals = |v: &[tally_invoicer::Invoice]| {
        v.iter()
            .map(|i| (i.invoice_id.clone(), i.total_minor))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        totals(&first),
        totals(&second),
        "re-running rater and invoicer is idempotent"
    );

    stop.cancel();
    aggregator
        .await
        .expect("aggregator task")
        .expect("aggregator stops cleanly");
    env.cleanup().await;
}
