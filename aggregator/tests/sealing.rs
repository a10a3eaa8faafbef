//! Sealing over the real servers: every day of a partition that can no longer change is
//! folded into `usage_days` once, holding exactly what its partials hold; a bounded read that
//! takes sealed days from there returns what the partials return; an event for a sealed day
//! (after the lateness was raised) is refused as `window_sealed`; and a day is final only once
//! the partition's consumer has acknowledged every message received up to its end plus the
//! lateness.

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{Datelike, Utc};
use futures::StreamExt;
use tally_aggregator::{seal, AggregatorConfig};
use tally_ingest::synthetic::Fleet;
use tally_ingest::Publisher;
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::{fold_readings, TestEnv};
use tally_platform::usage::{self, Request, Resolution, Scope, Totals};

const DAY: u32 = 86_400;

/// The meters of the fixture: one of each kind of state a day row holds (sums, the latest
/// event, a set of distinct values), as (slug, aggregation, value, unique value) in SQL over
/// `number`. Users repeat across days, so a month's distinct count is not the sum of its days.
const FIXTURE_METERS: [(&str, &str, &str, &str); 3] = [
    ("llm_tokens", "SUM", "toDecimal128(number % 7 + 1, 9)", "''"),
    ("seats", "LATEST", "toDecimal128(number % 13, 9)", "''"),
    (
        "active_users",
        "UNIQUE_COUNT",
        "toDecimal128(0, 9)",
        "concat('u', toString(number % 40 + {d} * 10))",
    ),
];

/// Readings of `n` events per meter and day for `days` whole days before today, written as a
/// committed batch per day of partition 0 (as an earlier aggregator would have written them).
async fn past_days(db: &clickhouse::Client, days: u32, n: u32) -> u32 {
    let today = Utc::now().timestamp() as u32 / DAY * DAY;
    let first = today - days * DAY;
    for d in 0..days {
        let day = first + d * DAY;
        let batch = format!("past-{d}");
        for (meter, aggregation, value, unique) in FIXTURE_METERS {
            let unique = unique.replace("{d}", &d.to_string());
            db.query(&format!(
                "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
                 window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
                 unique_value, batch_id, part, inserted_at) \
                 SELECT concat('c', toString(number % 3)), 'bot', \
                 concat('{meter}{d}_', toString(number)), '{meter}', '{aggregation}', \
                 toDateTime({day} + intDiv(number * 997, {n}) % 86400 - \
                 (intDiv(number * 997, {n}) % 86400) % 60), 60, \
                 toInt64({day} + intDiv(number * 997, {n}) % 86400) * 1000, [], [], '{{}}', \
                 {value}, {unique}, '{batch}', 0, now() \
                 FROM system.numbers LIMIT {n}"
            ))
            .execute()
            .await
            .expect("readings");
        }
        fold_readings(db, &batch).await;
    }
    first
}

/// Per (customer, meter, UTC calendar month): the quantity straight from the readings (an
/// oracle independent of partials, seals and the bounded read).
async fn monthly_oracle(
    db: &clickhouse::Client,
) -> std::collections::BTreeMap<(String, String, u32), String> {
    let rows: Vec<(String, String, u32, String)> = db
        .query(
            "SELECT customer, meter, toUInt32(toUInt32(toStartOfMonth(window_start)) * 86400), \
             toString(multiIf(aggregation = 'SUM', sum(value), \
                aggregation = 'LATEST', argMax(value, (time_ms, event_id)), \
                toDecimal128(uniqExact(unique_value), 9))) \
             FROM usage_meter_readings WHERE batch_id LIKE 'past-%' \
             GROUP BY customer, meter, aggregation, toStartOfMonth(window_start)",
        )
        .fetch_all()
        .await
        .expect("oracle");
    rows.into_iter()
        .map(|(c, m, month, q)| {
            let q: rust_decimal::Decimal = q.parse().expect("decimal");
            ((c, m, month), q.normalize().to_string())
        })
        .collect()
}

/// Per (customer, meter, UTC calendar month): the quantity of `rows`.
fn per_month(
    rows: &[usage::UsageRow],
) -> std::collections::BTreeMap<(String, String, u32), String> {
    let mut totals: std::collections::BTreeMap<(String, String, u32), (String, Totals)> =
        Default::default();
    for r in rows {
        let month = chrono::DateTime::from_timestamp(i64::from(r.start), 0)
            .expect("time")
            .date_naive()
            .with_day(1)
            .expect("day 1")
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp() as u32;
        let t = totals
            .entry((r.customer.clone(), r.meter.clone(), month))
            .or_insert_with(|| (r.aggregation.clone(), Totals::default()));
        t.1.add(r).expect("representable");
    }
    totals
        .into_iter()
        .map(|(k, (agg, t))| (k, t.quantity(&agg).unwrap().normalize().to_string()))
        .collect()
}

/// Per (customer, meter, day): (quantity, events) from `rows`.
fn per_day(
    rows: &[usage::UsageRow],
) -> std::collections::BTreeMap<(String, String, u32), (String, u64)> {
    let mut totals: std::collections::BTreeMap<(String, String, u32), (String, Totals)> =
        Default::default();
    for r in rows {
        let t = totals
            .entry((r.customer.clone(), r.meter.clone(), r.start - r.start % DAY))
            .or_insert_with(|| (r.aggregation.clone(), Totals::default()));
        t.1.add(r).expect("representable");
    }
    totals
        .into_iter()
        .map(|(k, (agg, t))| {
            (
                k,
                (t.quantity(&agg).unwrap().normalize().to_string(), t.events),
            )
        })
        .collect()
}

async fn sealed_days(db: &clickhouse::Client) -> Vec<(u32, u64)> {
    db.query(
        "SELECT toUInt32(toUInt32(day) * 86400) AS d, count() FROM usage_seals \
         WHERE day > toDate(0) AND seal_id NOT IN (SELECT batch_id FROM usage_aborts) \
         GROUP BY d ORDER BY d",
    )
    .fetch_all()
    .await
    .expect("seals")
}

fn config() -> AggregatorConfig {
    AggregatorConfig {
        allowed_lateness_secs: 1,
        future_tolerance_secs: 1,
        dedup_horizon_secs: 2,
        seal_every_secs: 1,
        seal_days_max: 2,
        batch_max_events: 200,
        batch_max_wait_ms: 100,
        lease_secs: 1,
        ..AggregatorConfig::default()
    }
}

async fn run(env: &TestEnv, cfg: AggregatorConfig, stop: Shutdown) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let (db, nats_cfg) = (env.db(), env.nats.clone());
    tokio::spawn(async move {
        tally_aggregator::run(client, db, &nats_cfg, &cfg, support::meters(), stop)
            .await
            .expect("aggregator");
    })
}

async fn publish_now(js: &jetstream::Context, prefix: &str, tag: &str, n: usize) {
    let mut fleet = Fleet::new(tag, 2, 1, tag, 5).expect("fleet");
    let mut publisher = Publisher::new(js.clone(), prefix, 64);
    for _ in 0..n {
        publisher
            .publish(&fleet.next_event(Utc::now()))
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("acks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_days_are_sealed_once_and_read_back_exactly() {
    let env = TestEnv::new("sealing_days").await;
    let db = env.db();
    let first = past_days(&db, 3, 5000).await;
    let js = jetstream::new(async_nats::connect(&env.nats.url).await.expect("NATS"));
    streams::ensure(&js, &env.nats).await.expect("streams");
    // the partials per day, before any seal
    let everything = Request {
        from: first,
        to: first + 4 * DAY,
        scope: Scope::All,
        meter: None,
        by_agent: false,
        resolution: Resolution::Windows,
        split: &[],
        months_except: None,
        through: None,
    };
    let before = per_day(
        &usage::read(&db, &usage::Plan::default(), &everything)
            .await
            .unwrap(),
    );
    assert_eq!(before.len(), 27, "3 customers x 3 meters x 3 days");
    let oracle = monthly_oracle(&db).await;
    assert_eq!(
        per_month(
            &usage::read(&db, &usage::Plan::default(), &everything)
                .await
                .unwrap()
        ),
        oracle,
        "the partials hold what the readings hold"
    );

    let stop = Shutdown::new();
    let agg = run(&env, config(), stop.clone()).await;
    // a current event moves the stream on: every past day is final
    publish_now(&js, &env.nats.subject_prefix, "now", 20).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sealed_days(&db).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "days not sealed: {:?}",
            sealed_days(&db).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // each past day once, in order, from the first day with data
    let sealed = sealed_days(&db).await;
    assert_eq!(
        sealed[..3],
        [(first, 1), (first + DAY, 1), (first + 2 * DAY, 1)],
        "every day sealed once"
    );
    // the daily rows hold exactly the day's partials
    let days_read = Request {
        resolution: Resolution::Days,
        to: first + 3 * DAY,
        ..everything.clone()
    };
    let plan = usage::plan(&db, first).await.unwrap();
    assert!(
        plan.sealed
            .iter()
            .any(|&(p, t)| p == 0 && t >= first + 2 * DAY),
        "{plan:?}"
    );
    let rows = usage::read(&db, &plan, &days_read).await.unwrap();
    assert!(
        rows.iter().all(|r| r.end - r.start == DAY),
        "sealed days are read as day rows"
    );
    assert_eq!(
        per_day(&rows),
        before,
        "the sealed days hold what the partials hold"
    );
    // sealed days folded per calendar month on the server (all but c2, who gets day rows):
    // the same quantities as the readings, distinct values and latest events included
    let except = vec!["c2".to_owned()];
    let monthly = Request {
        months_except: Some(&except),
        through: None,
        ..days_read.clone()
    };
    let rows = usage::read(&db, &plan, &monthly).await.unwrap();
    assert!(rows
        .iter()
        .any(|r| r.customer == "c0" && r.end - r.start > DAY));
    assert!(rows
        .iter()
        .filter(|r| r.customer == "c2")
        .all(|r| r.end - r.start <= DAY));
    assert_eq!(per_month(&rows), oracle, "months folded on the server");
    // a day split for one customer (a period starting at 09:00 UTC) is read per window for it
    let split = vec![("c1".to_owned(), first + DAY)];
    let split_read = Request {
        split: &split,
        ..days_read.clone()
    };
    let rows = usage::read(&db, &plan, &split_read).await.unwrap();
    assert!(rows
        .iter()
        .any(|r| r.customer == "c1" && r.start >= first + DAY && r.end - r.start == 60));
    assert_eq!(per_day(&rows), before, "the same usage either way");

    // raised lateness on a running system: an event of a sealed day is refused, not lost
    stop.cancel();
    agg.await.unwrap();
    let stop = Shutdown::new();
    let agg = run(
        &env,
        AggregatorConfig {
            allowed_lateness_secs: 4 * 86_400,
            dedup_horizon_secs: 4 * 86_400 + 1,
            ..config()
        },
        stop.clone(),
    )
    .await;
    let mut fleet = Fleet::new("late", 1, 1, "late", 6).expect("fleet");
    let mut late = fleet.next_event(Utc::now());
    late.time = chrono::DateTime::from_timestamp(i64::from(first + DAY + 3600), 0).unwrap();
    let mut publisher = Publisher::new(js.clone(), &env.nats.subject_prefix, 1);
    publisher.publish(&late).await.expect("publish");
    publisher.flush().await.expect("ack");
    let dlq = js.get_stream(&env.nats.dlq_stream).await.expect("dlq");
    let consumer = dlq
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .expect("consumer");
    let mut msgs = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .expect("fetch");
    let msg = msgs.next().await.expect("a dead letter").expect("message");
    let record: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(record["reason"], "window_sealed", "{record}");
    let after = per_day(
        &usage::read(&db, &usage::Plan::default(), &everything)
            .await
            .unwrap(),
    );
    assert_eq!(
        after
            .iter()
            .filter(|((c, _, _), _)| c.starts_with('c'))
            .collect::<Vec<_>>(),
        before.iter().collect::<Vec<_>>(),
        "sealed days unchanged"
    );
    stop.cancel();
    agg.await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_is_final_only_once_every_message_up_to_its_end_plus_lateness_is_acked() {
    let env = TestEnv::new("sealing_final").await;
    let js = jetstream::new(async_nats::connect(&env.nats.url).await.expect("NATS"));
    let stream = streams::ensure(&js, &env.nats).await.expect("streams");
    assert_eq!(
        seal::final_until(&js, &env.nats.stream, "aggregator")
            .await
            .ok()
            .flatten(),
        None,
        "an empty stream says nothing"
    );
    publish_now(&js, &env.nats.subject_prefix, "held", 3).await;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("aggregator".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(3)
        .messages()
        .await
        .expect("fetch");
    let mut held = Vec::new();
    while let Some(Ok(m)) = batch.next().await {
        held.push(m);
    }
    assert_eq!(held.len(), 3);
    let first_received = held[0].info().unwrap().published.unix_timestamp_nanos() / 1_000_000;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish_now(&js, &env.nats.subject_prefix, "later", 1).await;
    // the first message is delivered, not acknowledged: nothing received after it is final
    let until = seal::final_until(&js, &env.nats.stream, "aggregator")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(i128::from(until), first_received);
    for m in &held {
        m.double_ack().await.expect("ack");
    }
    // acknowledged (and the later message pending): the bound moves to the pending message
    let until = seal::final_until(&js, &env.nats.stream, "aggregator")
        .await
        .unwrap()
        .unwrap();
    assert!(i128::from(until) >= first_received + 1000, "{until}");
    env.cleanup().await;
}
