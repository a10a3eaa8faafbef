//! The ingest publisher on a replicated stream: nats-server 2.15 answers a publish whose
//! `Nats-Msg-Id` belongs to a message still being replicated with 409 "duplicate message id
//! is in process" (JetStream error 10158), neither stored nor refused. The publisher sends
//! such a message again until JetStream acknowledges it (`tally_ingest::publisher`), so a
//! retry that follows its original closely is a duplicate, not an error.

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use tally_ingest::synthetic::Fleet;
use tally_ingest::Publisher;
use tally_platform::{streams, NatsConfig};

use crate::nodes::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cluster: scripts/cluster.sh test"]
async fn an_event_sent_twice_at_once_on_r3_is_stored_once_and_acknowledged_twice() {
    const EVENTS: usize = 2_000;
    let cluster = Cluster::from_env();
    let pid = std::process::id();
    // a prefix of its own: the cluster maps `usage.*.*` into partitions
    let cfg = NatsConfig {
        url: cluster.nats_url(1),
        stream: format!("CL_PUBLISH_{pid}"),
        subject_prefix: format!("clpublish{pid}"),
        replicas: 3,
        partitions: 0,
        max_bytes: super::chaos::STREAM_MAX_BYTES,
        ..NatsConfig::default()
    };
    let client = streams::connect(&cfg).await.expect("nats");
    let js = jetstream::new(client);
    let _ = js.delete_stream(&cfg.stream).await;
    let mut stream = js
        .create_stream(streams::usage_config(&cfg))
        .await
        .expect("an R3 stream");
    assert_eq!(stream.info().await.expect("info").config.num_replicas, 3);

    let mut fleet = Fleet::new("pub", 3, 3, "twice", 7).unwrap();
    let events: Vec<_> = (0..EVENTS).map(|_| fleet.next_event(Utc::now())).collect();
    let mut publisher = Publisher::new(js.clone(), &cfg.subject_prefix, 256);
    for e in &events {
        // the retry right behind its original, as a publisher re-sending a chunk does
        publisher.publish(e).await.expect("publish");
        publisher.publish(e).await.expect("publish again");
    }
    let stats = tokio::time::timeout(Duration::from_secs(120), publisher.flush())
        .await
        .expect("every ack within 2 minutes")
        .expect("every send acknowledged");
    let stored = stream.info().await.expect("info").state.messages;
    println!(
        "cluster publisher: {EVENTS} events sent twice each: {} stored, {} duplicates, {} sends \
         answered \"in process\" and sent again; {stored} messages in the stream",
        stats.stored, stats.duplicates, stats.in_process
    );
    assert_eq!(stats.stored, EVENTS as u64, "each event stored once");
    assert_eq!(stats.duplicates, EVENTS as u64, "each retry a duplicate");
    assert_eq!(stored, EVENTS as u64);
    assert!(
        stats.in_process > 0,
        "no retry met an original still being replicated: the test did not exercise the \
         re-send (a NATS version that no longer answers 10158?)"
    );
    let _ = js.delete_stream(&cfg.stream).await;
}
