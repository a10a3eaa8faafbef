//! Scale-out: with `nats.partitions = 2` the NATS server maps `usage.<customer>.<agent>` to
//! `usage_p.<partition>.<customer>.<agent>` (partitioned by customer), and two aggregators,
//! one per partition, split the work. Usage stays exact, and every customer's events are
//! committed by exactly one partition's consumer.

mod support;

use std::time::Duration;

use chrono::Utc;
use tally_ingest::synthetic::Fleet;
use tally_ingest::Publisher;
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_platform::{streams, NatsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partitions_split_customers_and_count_exactly() {
    let mut env = TestEnv::new("partitions").await;
    let nats_cfg = NatsConfig {
        partitions: 2,
        ..env.nats.clone()
    };
    let server = support::Nats::start_with(&nats_cfg.partition_mapping().expect("a mapping"));
    env.nats = NatsConfig {
        url: server.url(),
        ..nats_cfg
    };

    let stop = Shutdown::new();
    let mut tasks = Vec::new();
    for p in 0..2 {
        let cfg = tally_aggregator::AggregatorConfig {
            partition: Some(p),
            batch_max_events: 500,
            batch_max_wait_ms: 100,
            ..Default::default()
        };
        let client = async_nats::connect(&env.nats.url).await.unwrap();
        let (db, nats_cfg, stop) = (env.db(), env.nats.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            tally_aggregator::run(client, db, &nats_cfg, &cfg, support::meters(), stop).await
        }));
    }

    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    streams::ensure(&js, &env.nats).await.unwrap();
    let mut fleet = Fleet::new("cust", 6, 2, "part", 3).unwrap();
    let events: Vec<_> = (0..3000).map(|_| fleet.next_event(Utc::now())).collect();
    let mut publisher = Publisher::new(js.clone(), &env.nats.subject_prefix, 256);
    for e in &events {
        publisher.publish(e).await.unwrap();
    }
    for e in events.iter().take(300) {
        publisher.publish(e).await.unwrap(); // retries, caught by JetStream
    }
    publisher.flush().await.unwrap();
    for p in 0..2 {
        assert!(
            streams::wait_drained(
                &js,
                &env.nats.stream,
                &format!("aggregator-p{p}"),
                Duration::from_secs(60)
            )
            .await
        );
    }

    let tokens: u64 = events
        .iter()
        .filter_map(|e| e.data["tokens"].as_u64())
        .sum();
    let db = env.db();
    let (q, n): (String, u64) = db
        .query("SELECT toString(sum(quantity)), sum(event_count) FROM v_usage WHERE meter = 'llm_tokens'")
        .fetch_one()
        .await
        .unwrap();
    let q: rust_decimal::Decimal = q.parse().unwrap();
    assert_eq!(q, rust_decimal::Decimal::from(tokens));
    let calls = events
        .iter()
        .filter(|e| e.event_type == "tool.call")
        .count() as u64;
    assert_eq!(n, events.len() as u64 - calls);
    let per_customer: Vec<(String, u64, u32)> = db
        .query(
            "SELECT customer, uniqExact(part), any(part) FROM usage_raw \
             GROUP BY customer ORDER BY customer",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(per_customer.len(), 6);
    assert!(
        per_customer.iter().all(|(_, consumers, _)| *consumers == 1),
        "{per_customer:?}"
    );
    // the server's partition of each customer is the one NatsConfig::partition_of computes
    // (recovery keeps only its own partition's ids by it)
    for (customer, _, part) in &per_customer {
        let p = env.nats.partition_of(customer).expect("partitions");
        assert_eq!(*part, p, "partition of {customer}");
    }
    let consumers: Vec<String> = db
        .query("SELECT DISTINCT consumer FROM usage_batches ORDER BY consumer")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        consumers,
        vec!["aggregator-p0", "aggregator-p1"],
        "both partitions did work"
    );

    stop.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    // a restarted instance rebuilds only its own partition's ids
    for p in 0..2 {
        let mine = |customer: &str| env.nats.partition_of(customer) == Some(p);
        let mut limits = tally_aggregator::limits::Limits::new(
            tally_aggregator::limits::Bounds::from_config(&Default::default()),
            &support::meters(),
        );
        let dedup = tally_aggregator::recovery::load(&db, 0, 86_400, &mine, &mut limits)
            .await
            .unwrap();
        assert_eq!(
            limits.customers(),
            events
                .iter()
                .filter(|e| mine(e.customer.as_str()))
                .map(|e| e.customer.as_str())
                .collect::<std::collections::HashSet<_>>()
                .len(),
            "the limits count only the partition's customers"
        );
        let expected = events.iter().filter(|e| mine(e.customer.as_str())).count();
        assert!(
            expected > 0 && expected < events.len(),
            "both partitions hold customers"
        );
        assert_eq!(
            dedup.committed_len(),
            expected,
            "ids recovered by partition {p}"
        );
    }
    env.cleanup().await;
}
