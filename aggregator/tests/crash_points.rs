//! The real `tally-aggregator` binary crashed exactly between two steps of a flush (not at a
//! random moment, as in `faults.rs`), stopped with a batch in flight, refused its commit
//! marker by a ClickHouse that is up, and started on a backlog older than the allowed
//! lateness. Each case checks the committed usage against the published events: nothing
//! missing, nothing written twice, every rejection recorded once.
//!
//! Runs against the shared local stack, each test in its own streams and database.

mod support;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use support::{expected_totals, fetch_totals, AggregatorProcess, Totals};
use tally_aggregator::crash::{self, CrashPoint};
use tally_aggregator::AggregatorConfig;
use tally_domain::EventId;
use tally_ingest::synthetic::Fleet;
use tally_ingest::{OutgoingEvent, Publisher};
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

const BINARY: &str = env!("CARGO_BIN_EXE_tally-aggregator");

/// What the test published and what it expects to be billed.
struct Published {
    events: Vec<OutgoingEvent>,
    /// Messages refused by the aggregator (unknown event type).
    rejected: u64,
}

impl Published {
    fn expected(&self) -> Totals {
        expected_totals(&self.events)
    }
}

/// One test's servers, config file and log.
struct Case {
    env: TestEnv,
    js: jetstream::Context,
    config: PathBuf,
    log: PathBuf,
    consumer: String,
}

impl Case {
    async fn new(name: &str, aggregator: &str) -> Case {
        let env = TestEnv::new(name).await;
        let dir = std::env::temp_dir().join(format!("tally-crash-{}", env.clickhouse.database));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("aggregator.toml");
        let text = format!(
            r#"
[nats]
url = "{nats_url}"
stream = "{stream}"
subject_prefix = "{prefix}"
dlq_stream = "{dlq}"
dlq_subject_prefix = "{dlq_prefix}"

[clickhouse]
url = "{ch_url}"
database = "{db}"

[aggregator]
metrics_addr = "127.0.0.1:0"
{aggregator}

[[meters]]
slug = "llm_tokens"
event_type = "llm.tokens"
aggregation = "SUM"
value_property = "$.tokens"

[[meters]]
slug = "tool_calls"
event_type = "tool.call"
aggregation = "COUNT"
"#,
            nats_url = env.nats.url,
            stream = env.nats.stream,
            prefix = env.nats.subject_prefix,
            dlq = env.nats.dlq_stream,
            dlq_prefix = env.nats.dlq_subject_prefix,
            ch_url = env.clickhouse.url,
            db = env.clickhouse.database,
        );
        std::fs::write(&config, text).expect("config file");
        let client = async_nats::connect(&env.nats.url).await.expect("NATS");
        let js = jetstream::new(client);
        streams::ensure(&js, &env.nats).await.expect("streams");
        Case {
            js,
            log: dir.join("aggregator.log"),
            config,
            consumer: AggregatorConfig::default().consumer_name(),
            env,
        }
    }

    fn start(&self) -> AggregatorProcess {
        AggregatorProcess::start(BINARY, &self.config, &self.log)
    }

    fn start_crashing_at(&self, point: CrashPoint) -> AggregatorProcess {
        AggregatorProcess::start_with_env(BINARY, &self.config, &self.log, crash::ENV, point.name())
    }

    /// Publishes `n` synthetic events (with `event_time` as their time, or now) and, after every
    /// tenth, one event of a type no meter selects; then each of the first `resend` events
    /// again under the same id.
    async fn publish(&self, n: usize, resend: usize, tag: &str) -> Published {
        let mut fleet = Fleet::new(&format!("{tag}c"), 3, 2, tag, 11).expect("fleet");
        let events: Vec<_> = (0..n).map(|_| fleet.next_event(Utc::now())).collect();
        let mut publisher = Publisher::new(self.js.clone(), &self.env.nats.subject_prefix, 256);
        let mut rejected = 0;
        for (i, e) in events.iter().enumerate() {
            publisher.publish(e).await.expect("publish");
            if i % 10 == 0 {
                let mut stray = e.clone();
                stray.id = EventId::new(format!("{}-stray", e.id)).expect("an id");
                stray.event_type = "mystery.meter".into();
                publisher.publish(&stray).await.expect("publish");
                rejected += 1;
            }
        }
        for e in events.iter().take(resend) {
            publisher.publish(e).await.expect("publish");
        }
        publisher.flush().await.expect("acks");
        Published { events, rejected }
    }

    async fn wait_drained(&self, within: Duration) {
        assert!(
            streams::wait_drained(&self.js, &self.env.nats.stream, &self.consumer, within).await,
            "the stream was not drained within {within:?}; log: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    async fn ack_pending(&self) -> u64 {
        let stream = self
            .js
            .get_stream(&self.env.nats.stream)
            .await
            .expect("stream");
        stream
            .consumer_info(&self.consumer)
            .await
            .map(|i| i.num_ack_pending as u64)
            .unwrap_or(0)
    }

    async fn committed(&self) -> Totals {
        fetch_totals(
            &self.env.db(),
            "SELECT customer, agent, meter, toString(sum(quantity)), sum(event_count) \
             FROM v_usage GROUP BY customer, agent, meter",
        )
        .await
    }

    /// Raw events in committed batches (a batch committed twice would show here even though
    /// the views count each event once) and raw events in all batches.
    async fn raw_event_rows(&self) -> (u64, u64) {
        self.env
            .db()
            .query(
                "SELECT countIf(batch_id IN (SELECT batch_id FROM usage_batches)), count() \
                 FROM usage_events",
            )
            .fetch_one()
            .await
            .expect("usage_events")
    }

    async fn dead_letters(&self) -> u64 {
        let mut dlq = self
            .js
            .get_stream(&self.env.nats.dlq_stream)
            .await
            .expect("DLQ");
        dlq.info().await.expect("DLQ info").state.messages
    }

    /// Usage exact, every accepted event committed once, every rejection recorded once.
    async fn assert_exact(&self, published: &Published) {
        assert_eq!(
            self.committed().await,
            published.expected(),
            "usage per customer, agent and meter"
        );
        let (committed, _) = self.raw_event_rows().await;
        assert_eq!(
            committed,
            published.events.len() as u64,
            "raw events in committed batches"
        );
        assert_eq!(
            self.dead_letters().await,
            published.rejected,
            "dead-letter records"
        );
    }

    async fn cleanup(self) {
        let _ = std::fs::remove_dir_all(self.config.parent().expect("dir"));
        self.env.cleanup().await;
    }
}

/// Polls `check` every 100 ms until it holds; fails the test after 60 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn aborted(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_a_flush_neither_loses_nor_double_counts() {
    for point in CrashPoint::ALL {
        let case = Case::new(
            &format!("crash_{}", point.name()),
            "batch_max_events = 200\nbatch_max_wait_ms = 100\nack_wait_secs = 2",
        )
        .await;
        // everything is in the stream before the aggregator starts, so its first batch holds
        // accepted events, a re-sent one and rejected ones
        let published = case.publish(600, 50, point.name()).await;
        let first = case.start_crashing_at(point);
        let status = first.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| {
            panic!(
                "{}: the aggregator did not reach its crash point",
                point.name()
            )
        });
        assert!(
            aborted(status),
            "{}: exited with {status}, not by abort()",
            point.name()
        );
        // what the crash left behind, before the restart repairs anything
        let (committed_at_crash, written_at_crash) = case.raw_event_rows().await;
        match point {
            CrashPoint::AfterDeadLetters => {
                assert_eq!(written_at_crash, 0, "nothing written before the commit");
                assert!(
                    case.dead_letters().await > 0,
                    "dead letters published before the crash"
                );
            }
            CrashPoint::AfterRows => {
                assert!(written_at_crash > 0, "rows written before the crash");
                assert_eq!(
                    committed_at_crash, 0,
                    "but no marker, so none of them counts"
                );
            }
            CrashPoint::AfterMarker | CrashPoint::MidAck => {
                assert!(committed_at_crash > 0, "a batch committed before the crash");
            }
        }
        let second = case.start();
        case.wait_drained(Duration::from_secs(90)).await;
        assert!(second.terminate().success(), "{}: clean stop", point.name());
        case.assert_exact(&published).await;
        case.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_batch_in_flight_flushes_commits_and_acks_before_exiting() {
    // a batch that would wait ten minutes for its flush: only the SIGTERM can flush it
    let case = Case::new(
        "sigterm_in_flight",
        "batch_max_events = 100000\nbatch_max_wait_ms = 600000",
    )
    .await;
    let aggregator = case.start();
    let published = case.publish(800, 40, "term").await;
    // JetStream itself drops the re-sends (inside its duplicate window)
    let messages = published.events.len() as u64 + published.rejected;
    let mut stream = case
        .js
        .get_stream(&case.env.nats.stream)
        .await
        .expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, messages);
    eventually("the aggregator taking every message", || async {
        case.ack_pending().await >= messages
    })
    .await;
    assert_eq!(
        case.raw_event_rows().await,
        (0, 0),
        "nothing flushed before the SIGTERM"
    );
    let started = Instant::now();
    let status = aggregator.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped in {:?}",
        started.elapsed()
    );
    // acknowledged before exiting: the server applies acks asynchronously, so give it a
    // moment, far below the 60 s AckWait after which an unacknowledged message would be
    // redelivered (nothing consumes any more, so only acks can drain the consumer)
    case.wait_drained(Duration::from_secs(5)).await;
    case.assert_exact(&published).await;
    case.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_refused_by_a_running_clickhouse_is_retried_and_counts_once() {
    let case = Case::new(
        "marker_refused",
        "batch_max_events = 200\nbatch_max_wait_ms = 100",
    )
    .await;
    let aggregator = case.start();
    // consuming: the durable consumer exists once the aggregator recovered and bound it
    eventually("the aggregator binding its consumer", || async {
        let stream = case.js.get_stream(&case.env.nats.stream).await;
        match stream {
            Ok(s) => s.consumer_info(&case.consumer).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    let db = case.env.db();
    db.query("DETACH TABLE usage_batches")
        .execute()
        .await
        .expect("detach");
    let published = case.publish(1000, 100, "refused").await;
    // rows go in, the marker is refused: nothing counts and nothing is acknowledged
    eventually("rows written while the marker is refused", || async {
        let written: u64 = db
            .query("SELECT count() FROM usage_events")
            .fetch_one()
            .await
            .expect("count");
        written > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        case.ack_pending().await > 0,
        "messages stay unacknowledged while the marker is refused"
    );
    db.query("ATTACH TABLE usage_batches")
        .execute()
        .await
        .expect("attach");
    case.wait_drained(Duration::from_secs(60)).await;
    assert!(aggregator.terminate().success());
    case.assert_exact(&published).await;
    let (committed, written) = case.raw_event_rows().await;
    assert!(
        written > committed,
        "the refused attempts' rows ({written} written, {committed} committed) never count"
    );
    case.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_older_than_the_allowed_lateness_is_still_billed() {
    // two seconds of lateness; the aggregator starts five seconds after the events were
    // published, so against its own clock every one of them would be too late
    let case = Case::new(
        "backlog_lateness",
        "batch_max_events = 500\nbatch_max_wait_ms = 100\nallowed_lateness_secs = 2",
    )
    .await;
    let published = case.publish(1000, 0, "backlog").await;
    // and one event that was already late when it was published
    let mut late = published.events[0].clone();
    late.id = EventId::new("late-on-arrival").expect("an id");
    late.time = Utc::now() - chrono::Duration::seconds(30);
    let mut publisher = Publisher::new(case.js.clone(), &case.env.nats.subject_prefix, 1);
    publisher.publish(&late).await.expect("publish");
    publisher.flush().await.expect("ack");
    let published_by = Utc::now().timestamp() as u32;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let aggregator = case.start();
    case.wait_drained(Duration::from_secs(60)).await;
    assert!(aggregator.terminate().success());
    assert_eq!(case.committed().await, published.expected());
    assert_eq!(
        case.dead_letters().await,
        published.rejected + 1,
        "only the late event and the strays refused"
    );
    // received_at is when JetStream stored the event, not when the aggregator read it
    let newest: u32 = case
        .env
        .db()
        .query("SELECT toUInt32(max(received_at)) FROM usage_events")
        .fetch_one()
        .await
        .expect("received_at");
    assert!(
        newest <= published_by,
        "received_at {newest} is after the publish ({published_by})"
    );
    case.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_read_after_a_backlog_finds_its_first_copy() {
    // a horizon of three seconds of received time; the re-sends are received a moment after
    // their first copies but read after more than the horizon of wall time: the ids they need
    // are older than what recovery loads at start, and must be loaded for them
    let case = Case::new(
        "backlog_resend",
        "batch_max_events = 500\nbatch_max_wait_ms = 100\nallowed_lateness_secs = 2\n\
         future_tolerance_secs = 1\ndedup_horizon_secs = 3",
    )
    .await;
    let first = case.start();
    let published = case.publish(300, 0, "resend").await;
    case.wait_drained(Duration::from_secs(60)).await;
    assert!(first.terminate().success());
    // the same events again, without Nats-Msg-Id so JetStream's own dedup lets them through
    for e in published.events.iter().take(100) {
        let subject = format!(
            "{}.{}.{}",
            case.env.nats.subject_prefix, e.customer, e.agent
        );
        case.js
            .publish(subject, e.to_json().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = case.start();
    case.wait_drained(Duration::from_secs(60)).await;
    assert!(second.terminate().success());
    case.assert_exact(&published).await;
    case.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_under_kill_9_seals_each_window_once_and_loses_nothing() {
    // two-second windows final a few seconds after they close, sealed every second, while the
    // aggregator (and its sealer) is killed every second and a half
    let case = Case::new(
        "seal_kills",
        "window_secs = 2\nallowed_lateness_secs = 1\nfuture_tolerance_secs = 1\n\
         dedup_horizon_secs = 2\nseal_every_secs = 1\nbatch_max_events = 200\n\
         batch_max_wait_ms = 500\nack_wait_secs = 5",
    )
    .await;
    // a killed instance's batch stays unacknowledged for the five seconds of AckWait while
    // later messages are committed: sealing by the newest message alone would seal its
    // windows before their events are in
    let mut current = Some(case.start());
    let publisher = {
        let js = case.js.clone();
        let prefix = case.env.nats.subject_prefix.clone();
        tokio::spawn(async move {
            let mut fleet = Fleet::new("sk", 3, 2, "sk", 13).expect("fleet");
            let mut publisher = Publisher::new(js, &prefix, 256);
            let mut events = Vec::new();
            for _ in 0..24 {
                for _ in 0..50 {
                    let e = fleet.next_event(Utc::now());
                    publisher.publish(&e).await.expect("publish");
                    events.push(e);
                }
                publisher.flush().await.expect("acks");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            events
        })
    };
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if let Some(p) = current.take() {
            p.kill9();
        }
        current = Some(case.start());
    }
    let mut events = publisher.await.expect("publisher");
    let published_by = Utc::now().timestamp() as u32;
    let published = Published {
        events: events.clone(),
        rejected: 0,
    };

    // later events move the stream on until every window holding a published event is sealed
    let db = case.env.db();
    let mut ticks = Fleet::new("sktick", 1, 1, "sktick", 14).expect("fleet");
    let mut publisher = Publisher::new(case.js.clone(), &case.env.nats.subject_prefix, 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tick = ticks.next_event(Utc::now());
        publisher.publish(&tick).await.expect("tick");
        publisher.flush().await.expect("ack");
        events.push(tick);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let unsealed: u64 = db
            .query(
                "SELECT count() FROM v_usage_readings \
                 WHERE window_start <= toDateTime(?) \
                 AND (customer, window_start, window_secs) NOT IN \
                 (SELECT customer, window_start, window_secs \
                 FROM usage_rollups WHERE sealed = 1 \
                 AND batch_id IN (SELECT batch_id FROM usage_batches))",
            )
            .bind(published_by)
            .fetch_one()
            .await
            .expect("unsealed");
        if unsealed == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unsealed} readings of published windows unsealed"
        );
    }
    case.wait_drained(Duration::from_secs(60)).await;
    if let Some(p) = current.take() {
        assert!(p.terminate().success());
    }
    case.assert_exact(&Published {
        events,
        rejected: 0,
    })
    .await;
    // each window sealed by exactly one committed seal (a killed seal has no marker)
    let (sealed, sealed_twice): (u64, u64) = db
        .query(
            "SELECT count(), countIf(seals > 1) FROM (SELECT customer, window_start, \
             uniqExact(batch_id) AS seals FROM usage_rollups WHERE sealed = 1 \
             AND batch_id IN (SELECT batch_id FROM usage_batches) \
             GROUP BY customer, window_start, window_secs)",
        )
        .fetch_one()
        .await
        .expect("seals");
    assert!(sealed > 0, "windows were sealed");
    assert_eq!(sealed_twice, 0, "no window sealed twice");
    // and the record is complete: no window was sealed before all of its events were in
    let record = fetch_totals(
        &db,
        "SELECT customer, agent, meter, toString(sum(quantity)), sum(events) \
         FROM usage_rollups WHERE sealed = 1 AND customer LIKE 'sk-%' \
         AND batch_id IN (SELECT batch_id FROM usage_batches) \
         GROUP BY customer, agent, meter",
    )
    .await;
    assert_eq!(
        record,
        published.expected(),
        "the sealed record of the published events"
    );
    case.cleanup().await;
}
