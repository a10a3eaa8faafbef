//! The consumer-lag and dead-letter gauges are sampled on their own clock: once the
//! aggregator has gone idle they must say "nothing pending" and show the dead letters written
//! in its only, early flush (sampled after flushes alone, they stayed at whatever the last
//! busy moment left, or were never set).

mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use tally_ingest::synthetic::Fleet;
use tally_ingest::Publisher;
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

/// The value of an unlabelled gauge in Prometheus text, if exported.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_dead_letter_gauges_are_true_while_idle() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let env = TestEnv::new("idle_gauges").await;
    let client = async_nats::connect(&env.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    streams::ensure(&js, &env.nats).await.unwrap();

    let mut fleet = Fleet::new("idle", 2, 2, "gauge", 5).unwrap();
    let mut publisher = Publisher::new(js.clone(), &env.nats.subject_prefix, 64);
    for _ in 0..200 {
        publisher
            .publish(&fleet.next_event(Utc::now()))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    for i in 0..3 {
        let subject = format!("{}.idle-0.gauge-0", env.nats.subject_prefix);
        js.publish(subject, format!("not json {i}").into_bytes().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let stop = Shutdown::new();
    let cfg = tally_aggregator::AggregatorConfig {
        batch_max_events: 1000,
        batch_max_wait_ms: 100,
        ..Default::default()
    };
    let (db, nats_cfg, stop2) = (env.db(), env.nats.clone(), stop.clone());
    let aggregator = tokio::spawn(async move {
        tally_aggregator::run(client, db, &nats_cfg, &cfg, support::meters(), stop2).await
    });
    assert!(
        streams::wait_drained(&js, &env.nats.stream, "aggregator", Duration::from_secs(60)).await
    );

    // idle now: within two sampling periods (5 s each) the gauges must show it
    let deadline = Instant::now() + Duration::from_secs(12);
    let (mut pending, mut ack_pending, mut dead) = (None, None, None);
    while Instant::now() < deadline {
        let text = prometheus.render();
        pending = gauge(&text, "tally_aggregator_consumer_pending_messages");
        ack_pending = gauge(&text, "tally_aggregator_consumer_ack_pending_messages");
        dead = gauge(&text, "tally_aggregator_dead_letter_messages");
        if (pending, ack_pending, dead) == (Some(0.0), Some(0.0), Some(3.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    aggregator.await.unwrap().unwrap();
    env.cleanup().await;
    assert_eq!(
        (pending, ack_pending, dead),
        (Some(0.0), Some(0.0), Some(3.0)),
        "pending, ack pending and dead-letter gauges while idle"
    );
}
