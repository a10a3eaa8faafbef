//! The whole path over the real servers: synthetic agents publish 10,000 events (3 customers,
//! 2 agents each, 2 meters, out of order) plus 500 re-sends of earlier ids (half inside
//! JetStream's duplicate window, half after it); the aggregator commits them; the rater and
//! the invoicer price and invoice them. Usage totals and every invoice line (meter, quantity,
//! unit price or tier steps, amount, plan and version) and total are compared with values this
//! test computes on its own, in integer arithmetic, from the events it sent and the plans
//! written down by hand (never through the rater's pricing code).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
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

/// One meter's price in a plan, written down by hand from the catalog in `tally_e2e`:
/// graduated tiers `(inclusive upper bound, unit price)`, the last unbounded; a per-unit price
/// is one unbounded tier. Unit prices are integers in `10^-scale` of the currency.
struct HandPrice {
    meter: &'static str,
    model: &'static str,
    scale: u32,
    tiers: &'static [(Option<u64>, u64)],
}

/// A plan written down by hand.
struct HandPlan {
    id: &'static str,
    version: u32,
    currency: &'static str,
    minor_digits: u32,
    prices: [HandPrice; 2],
}

/// 0.000003 USD per token; tool calls 0.02 USD up to 100, 0.015 up to 1000, then 0.01.
const STANDARD: HandPlan = HandPlan {
    id: "ai-standard",
    version: 1,
    currency: "USD",
    minor_digits: 2,
    prices: [
        HandPrice {
            meter: "llm_tokens",
            model: "per_unit",
            scale: 6,
            tiers: &[(None, 3)],
        },
        HandPrice {
            meter: "tool_calls",
            model: "graduated",
            scale: 3,
            tiers: &[(Some(100), 20), (Some(1000), 15), (None, 10)],
        },
    ],
};

/// 0.0004 JPY per token; tool calls 3 JPY up to 500, then 1.5 JPY.
const YEN: HandPlan = HandPlan {
    id: "ai-yen",
    version: 1,
    currency: "JPY",
    minor_digits: 0,
    prices: [
        HandPrice {
            meter: "llm_tokens",
            model: "per_unit",
            scale: 4,
            tiers: &[(None, 4)],
        },
        HandPrice {
            meter: "tool_calls",
            model: "graduated",
            scale: 1,
            tiers: &[(Some(500), 30), (None, 15)],
        },
    ],
};

/// One step of a line's arithmetic, as the invoice JSON names it (`tiers`).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierStep {
    tier: u32,
    from: Decimal,
    up_to: Option<Decimal>,
    quantity: Decimal,
    unit_price: Decimal,
    amount: Decimal,
}

/// The parts of an invoice line this test checks (decimals compare by value).
#[derive(Debug, PartialEq)]
struct LineCheck {
    meter: String,
    quantity: Decimal,
    price_model: String,
    /// `unit_price` of the line; none (empty) for graduated prices.
    unit_price: Option<Decimal>,
    tiers: Vec<TierStep>,
    plan: (String, u32),
    amount_before_discounts_minor: i64,
    discount_minor: i64,
    amount: Decimal,
    amount_minor: i64,
}

impl LineCheck {
    fn of(l: &tally_invoicer::InvoiceLine) -> LineCheck {
        LineCheck {
            meter: l.meter.clone(),
            quantity: l.quantity,
            price_model: l.price_model.clone(),
            unit_price: (!l.unit_price.is_empty())
                .then(|| l.unit_price.parse().expect("unit_price is a decimal")),
            tiers: serde_json::from_value(l.tiers.clone()).expect("tiers are tier steps"),
            plan: (l.plan_id.clone(), l.plan_version),
            amount_before_discounts_minor: l.amount_before_discounts_minor,
            discount_minor: l.discount_minor,
            amount: l.amount,
            amount_minor: l.amount_minor,
        }
    }
}

/// The line `price` of `plan` must produce for `quantity`, computed in integers: each tier
/// takes the part of the quantity above the previous bound up to its own, its amount is
/// `part x unit price` unrounded, and the line rounds their sum once to minor units.
fn expected_line(plan: &HandPlan, price: &HandPrice, quantity: u64) -> LineCheck {
    let dec = |mantissa: u64, scale: u32| Decimal::new(mantissa as i64, scale);
    let mut tiers = Vec::new();
    let mut from = 0;
    let mut sum = 0;
    for (i, &(up_to, unit)) in price.tiers.iter().enumerate() {
        if quantity <= from {
            break;
        }
        let part = up_to.map_or(quantity, |b| b.min(quantity)) - from;
        sum += part * unit;
        tiers.push(TierStep {
            tier: i as u32 + 1,
            from: dec(from, 0),
            up_to: up_to.map(|b| dec(b, 0)),
            quantity: dec(part, 0),
            unit_price: dec(unit, price.scale),
            amount: dec(part * unit, price.scale),
        });
        from = up_to.unwrap_or(u64::MAX);
    }
    let minor = round_half_up(sum, 10u64.pow(price.scale - plan.minor_digits)) as i64;
    LineCheck {
        meter: price.meter.to_owned(),
        quantity: dec(quantity, 0),
        price_model: price.model.to_owned(),
        unit_price: (price.model == "per_unit").then(|| dec(price.tiers[0].1, price.scale)),
        tiers,
        plan: (plan.id.to_owned(), plan.version),
        amount_before_discounts_minor: minor,
        discount_minor: 0,
        amount: Decimal::new(minor, plan.minor_digits),
        amount_minor: minor,
    }
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
                r.quantity.parse::<Decimal>().unwrap().try_into().unwrap(),
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
        let (tokens, calls) = want[&(inv.customer.to_string(), inv.period_start.clone())];
        let plan = if inv.customer == "cust-3" {
            &YEN
        } else {
            &STANDARD
        };
        let want_lines: Vec<LineCheck> = plan
            .prices
            .iter()
            .map(|p| {
                let quantity = if p.meter == "llm_tokens" {
                    tokens
                } else {
                    calls
                };
                expected_line(plan, p, quantity)
            })
            .collect();
        let mut got_lines: Vec<LineCheck> = inv.lines.iter().map(LineCheck::of).collect();
        got_lines.sort_by(|a, b| a.meter.cmp(&b.meter));
        assert_eq!(
            got_lines, want_lines,
            "lines of {} for {}",
            inv.customer, inv.period_start
        );
        let total: i64 = want_lines.iter().map(|l| l.amount_minor).sum();
        assert_eq!(inv.currency, plan.currency);
        assert_eq!(
            (inv.subtotal_minor, inv.discount_minor, inv.net_minor),
            (total, 0, total),
            "subtotal, discounts and net of {}",
            inv.customer
        );
        assert_eq!(
            (inv.tax_minor, inv.total_minor),
            (0, total),
            "invoice total of {}",
            inv.customer
        );
        assert_eq!(inv.status, Status::Draft, "the period is still open");
        assert_eq!(
            (inv.plan_id.as_str(), inv.plan_version),
            (plan.id, plan.version)
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
