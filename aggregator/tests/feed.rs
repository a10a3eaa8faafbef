//! The live usage feed over the real servers: every committed batch's notice carries exactly
//! the partials storage holds for it (the same usage per customer and meter), under the
//! batch's sequence that its rows carry too (`bseq`), sequences grow with the batches, every
//! hold an event names is listed once, and the join point read from the lease says that
//! storage holds every batch up to it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::Utc;
use futures::StreamExt;
use tally_domain::EventId;
use tally_ingest::synthetic::Fleet;
use tally_ingest::Publisher;
use tally_platform::feed::{self, FeedConfig, Notice};
use tally_platform::shutdown::Shutdown;
use tally_platform::streams;
use tally_platform::testkit::TestEnv;
use tally_platform::usage::{self, Request, Resolution, Scope, Totals, UsageRow};

/// Per (customer, agent, meter): (events, quantity) of `rows`.
fn totals(rows: &[UsageRow]) -> BTreeMap<(String, String, String), (u64, String)> {
    let mut acc: BTreeMap<(String, String, String), (String, Totals)> = BTreeMap::new();
    for r in rows {
        acc.entry((r.customer.clone(), r.agent.clone(), r.meter.clone()))
            .or_insert_with(|| (r.aggregation.clone(), Totals::default()))
            .1
            .add(r)
            .expect("representable");
    }
    acc.into_iter()
        .map(|(k, (agg, t))| {
            (
                k,
                (t.events, t.quantity(&agg).unwrap().normalize().to_string()),
            )
        })
        .collect()
}

async fn read_feed(js: &jetstream::Context, cfg: &FeedConfig) -> Vec<Notice> {
    let stream = js.get_stream(&cfg.stream).await.expect("feed stream");
    let last = stream.cached_info().state.last_sequence;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::new();
    let mut messages = consumer.messages().await.expect("messages");
    while (out.len() as u64) < last {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("a notice")
            .expect("message")
            .expect("message");
        out.push(feed::parse(&msg.payload).expect("a notice"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_notice_is_what_storage_holds_under_the_same_sequence() {
    let env = TestEnv::new("agg_feed").await;
    let js = jetstream::new(async_nats::connect(&env.nats.url).await.expect("NATS"));
    streams::ensure(&js, &env.nats).await.expect("streams");
    let feed_cfg = FeedConfig::for_nats(&env.nats);
    let stop = Shutdown::new();
    let agg = {
        let client = async_nats::connect(&env.nats.url).await.expect("NATS");
        let (db, nats_cfg, stop) = (env.db(), env.nats.clone(), stop.clone());
        let cfg = tally_aggregator::AggregatorConfig {
            batch_max_events: 300,
            batch_max_wait_ms: 50,
            ..Default::default()
        };
        tokio::spawn(async move {
            tally_aggregator::run(client, db, &nats_cfg, &cfg, support::meters(), stop).await
        })
    };
    let mut fleet = Fleet::new("feed", 5, 3, "feed", 11).expect("fleet");
    let mut publisher = Publisher::new(js.clone(), &env.nats.subject_prefix, 128);
    let mut holds = BTreeSet::new();
    for i in 0..2000 {
        let mut e = fleet.next_event(Utc::now());
        if i % 7 == 0 {
            let hold = format!("h-{i}");
            holds.insert((e.customer.as_str().to_owned(), hold.clone()));
            e.hold_id = Some(EventId::new(&hold).expect("id"));
        }
        publisher.publish(&e).await.expect("publish");
    }
    publisher.flush().await.expect("acks");
    assert!(
        streams::wait_drained(&js, &env.nats.stream, "aggregator", Duration::from_secs(60)).await,
        "aggregator did not drain"
    );

    let notices = read_feed(&js, &feed_cfg).await;
    assert!(notices.len() > 3, "several batches: {}", notices.len());
    let db = env.db();
    let seqs: Vec<(String, u64, u64)> = db
        .query("SELECT batch_id, min(bseq), max(bseq) FROM usage_partials GROUP BY batch_id")
        .fetch_all()
        .await
        .expect("bseq");
    let stored: BTreeMap<String, u64> = seqs
        .iter()
        .map(|(b, lo, hi)| {
            assert_eq!(lo, hi, "one sequence per batch");
            (b.clone(), *lo)
        })
        .collect();
    let mut last_bseq = 0;
    let mut rows = Vec::new();
    let mut noted = BTreeSet::new();
    for n in &notices {
        assert_eq!(
            stored.get(&n.batch),
            Some(&n.bseq),
            "batch {} sequence",
            n.batch
        );
        assert!(n.bseq >= last_bseq, "sequences grow with the batches");
        last_bseq = n.bseq;
        assert_eq!((n.chunk, n.chunks), (0, 1), "small batches fit one message");
        rows.extend(n.rows.iter().cloned());
        for h in &n.holds {
            assert!(
                noted.insert((h.customer.clone(), h.hold.clone())),
                "each hold once"
            );
        }
    }
    assert_eq!(stored.len(), notices.len(), "a notice per committed batch");
    assert_eq!(noted, holds, "every hold an event names");

    let read = Request {
        from: 0,
        to: u32::MAX - 86_400,
        scope: Scope::All,
        meter: None,
        by_agent: true,
        resolution: Resolution::Windows,
        split: &[],
        months_except: None,
        through: None,
    };
    let in_storage = usage::read(&db, &usage::Plan::default(), &read)
        .await
        .expect("read");
    assert_eq!(
        totals(&rows),
        totals(&in_storage),
        "the feed holds what storage holds"
    );

    let join = feed::join_point(
        &js,
        &format!("{}_AGGREGATORS", env.nats.stream),
        "aggregator",
    )
    .await
    .expect("join point");
    assert!(
        stored.values().all(|&b| b <= join.committed_through),
        "storage holds every batch up to the join point: {join:?}"
    );
    // storage up to a sequence, plus the notices after it, is everything
    let mid = notices[notices.len() / 2].bseq;
    let upto = Request {
        through: Some(usage::Through {
            part: 0,
            bseq_max: mid,
        }),
        ..read.clone()
    };
    let mut joined = usage::read(&db, &usage::Plan::default(), &upto)
        .await
        .expect("read up to");
    let before = joined.len();
    for n in notices.iter().filter(|n| n.bseq > mid) {
        joined.extend(n.rows.iter().cloned());
    }
    assert!(before > 0 && joined.len() > before);
    assert_eq!(
        totals(&joined),
        totals(&in_storage),
        "storage up to n + the feed after n"
    );
    let other = Request {
        through: Some(usage::Through {
            part: 1,
            bseq_max: u64::MAX,
        }),
        ..read.clone()
    };
    assert!(
        usage::read(&db, &usage::Plan::default(), &other)
            .await
            .expect("read")
            .is_empty(),
        "another partition's read holds nothing of partition 0"
    );
    stop.cancel();
    agg.await.expect("task").expect("aggregator");
    env.cleanup().await;
}
