//! The real `tally-aggregator` binary crashed exactly between two steps of a flush (not at a
//! random moment, as in `faults.rs`), stopped with a batch in flight, refused an insert by a
//! ClickHouse that is up, started on a backlog older than the allowed lateness, killed between
//! two copies of an event (the first copy in stream order must count), and killed while it
//! seals days. Each case checks the committed usage against the published events: nothing
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
        Case::with_window(name, aggregator, None).await
    }

    /// A case whose streams have a duplicate window of `window_secs` (default: 120 s).
    async fn with_window(name: &str, aggregator: &str, window_secs: Option<u64>) -> Case {
        let mut env = TestEnv::new(name).await;
        if let Some(w) = window_secs {
            env.nats.duplicate_window_secs = w;
        }
        let dir = std::env::temp_dir().join(format!("tally-crash-{}", env.clickhouse.database));
        let config = support::write_config(&dir, &env, aggregator, support::METERS_TOML);
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

    /// The state the partition lease names (`held`, `intent`, `released`).
    async fn lease_state(&self) -> String {
        let kv = self
            .js
            .get_key_value(format!("{}_AGGREGATORS", self.env.nats.stream))
            .await
            .expect("lease bucket");
        let value = kv
            .get(&self.consumer)
            .await
            .expect("lease")
            .expect("a lease");
        let v: serde_json::Value = serde_json::from_slice(&value).expect("lease JSON");
        v["state"].as_str().unwrap_or_default().to_owned()
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

    /// Raw events of batches that count (a batch committed twice would show here) and raw
    /// events of all batches, aborted ones included.
    async fn raw_event_rows(&self) -> (u64, u64) {
        self.env
            .db()
            .query(
                "SELECT countIf(batch_id NOT IN (SELECT batch_id FROM usage_aborts)), count() \
                 FROM usage_raw",
            )
            .fetch_one()
            .await
            .expect("usage_events")
    }

    /// Refused messages recorded in the dead-letter stream (distinct stream sequences).
    async fn dead_letter_messages(&self) -> u64 {
        let mut dlq = self
            .js
            .get_stream(&self.env.nats.dlq_stream)
            .await
            .expect("DLQ");
        let last = dlq.info().await.expect("DLQ info").state.last_sequence;
        let mut seqs = std::collections::BTreeSet::new();
        for seq in 1..=last {
            if let Ok(m) = dlq.get_raw_message(seq).await {
                let r: serde_json::Value = serde_json::from_slice(&m.payload).expect("record");
                seqs.insert(r["stream_seq"].as_u64().expect("stream_seq"));
            }
        }
        seqs.len() as u64
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
                    case.lease_state().await,
                    "intent",
                    "but not committed: the lease still names the batch as unfinished"
                );
                let _ = committed_at_crash;
            }
            CrashPoint::AfterMarker | CrashPoint::MidAck => {
                assert!(committed_at_crash > 0, "a batch committed before the crash");
            }
        }
        let second = case.start();
        case.wait_drained(Duration::from_secs(90)).await;
        assert!(second.terminate().success(), "{}: clean stop", point.name());
        case.assert_exact(&published).await;
        if point == CrashPoint::AfterRows {
            let aborted: u64 = case
                .env
                .db()
                .query("SELECT count() FROM usage_aborts WHERE reason = 'takeover'")
                .fetch_one()
                .await
                .expect("aborts");
            assert_eq!(aborted, 1, "the takeover aborted the unfinished batch");
        }
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
async fn an_insert_refused_by_a_running_clickhouse_is_aborted_retried_and_counts_once() {
    let case = Case::new(
        "insert_refused",
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
    // the raw rows go in, the batch log is refused: each attempt is aborted, nothing is
    // acknowledged
    eventually("rows written while an insert is refused", || async {
        let written: u64 = db
            .query("SELECT count() FROM usage_raw")
            .fetch_one()
            .await
            .expect("count");
        written > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        case.ack_pending().await > 0,
        "messages stay unacknowledged while an insert is refused"
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
        "the refused attempts' rows ({written} written, {committed} counted) never count"
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
        .query("SELECT toUInt32(max(received_at)) FROM usage_raw")
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
    let case = Case::with_window(
        "backlog_resend",
        "batch_max_events = 500\nbatch_max_wait_ms = 100\nallowed_lateness_secs = 2\n\
         future_tolerance_secs = 1\ndedup_horizon_secs = 3",
        Some(1),
    )
    .await;
    let first = case.start();
    let published = case.publish(300, 0, "resend").await;
    case.wait_drained(Duration::from_secs(60)).await;
    assert!(first.terminate().success());
    // the same events again, after JetStream's one-second duplicate window, so its own
    // dedup lets them through
    let mut publisher = Publisher::new(case.js.clone(), &case.env.nats.subject_prefix, 64);
    for e in published.events.iter().take(100) {
        publisher.publish(e).await.expect("publish");
    }
    publisher.flush().await.expect("acks");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = case.start();
    case.wait_drained(Duration::from_secs(60)).await;
    assert!(second.terminate().success());
    case.assert_exact(&published).await;
    case.cleanup().await;
}

/// Issue 14, requirement 7: of two copies of an identity with different payloads, the one
/// JetStream received first counts, whatever crashed between them. The first copy's batch is
/// written and the aggregator dies before committing it (its messages stay unacknowledged
/// for the whole 60 s AckWait); the second copy arrives after JetStream's duplicate window.
/// Read in delivery order, the restarted aggregator would see the second copy first (the
/// first comes back only after AckWait): it recreates its consumer at the ack floor and reads
/// in stream order, so the first copy counts and the second is `conflicting_duplicate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_copy_in_stream_order_counts_across_a_kill() {
    let case = Case::with_window(
        "stream_order",
        "batch_max_events = 20\nbatch_max_wait_ms = 100\nack_wait_secs = 60",
        Some(1),
    )
    .await;
    let published = case.publish(10, 0, "order").await;
    let first = case.start_crashing_at(CrashPoint::AfterRows);
    let status = first
        .wait_exit(Duration::from_secs(60))
        .expect("the aggregator reached its crash point");
    assert!(aborted(status), "exited with {status}, not by abort()");
    // the conflicting copy: the same identity, other data, received after the first
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conflicting = published.events[0].clone();
    conflicting.data["tokens"] = serde_json::json!(999_999);
    let mut publisher = Publisher::new(case.js.clone(), &case.env.nats.subject_prefix, 1);
    publisher.publish(&conflicting).await.expect("publish");
    publisher.flush().await.expect("ack");
    let second = case.start();
    // well inside AckWait: the first copies come back at once, not after 60 s
    case.wait_drained(Duration::from_secs(20)).await;
    assert!(second.terminate().success());
    assert_eq!(
        case.committed().await,
        published.expected(),
        "the first copies are billed, never the later conflicting one"
    );
    // the stray's record may be published twice (before the crash and after, beyond the
    // one-second duplicate window of this case): one record per refused message
    assert_eq!(case.dead_letter_messages().await, published.rejected + 1);
    case.cleanup().await;
}

/// Days sealed while the aggregator is killed every 2.5 s: each day is sealed exactly once
/// (a killed seal is aborted by the next instance and done again), and the sealed days hold
/// exactly the usage of their partials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_under_kill_9_seals_each_day_once_and_loses_nothing() {
    let case = Case::new(
        "seal_kills",
        "allowed_lateness_secs = 1\nfuture_tolerance_secs = 1\ndedup_horizon_secs = 2\n\
         seal_every_secs = 1\nseal_days_max = 1\nbatch_max_events = 200\nbatch_max_wait_ms = 100",
    )
    .await;
    let db = case.env.db();
    // eight past days of usage, committed by an earlier instance
    const DAY: u32 = 86_400;
    let today = Utc::now().timestamp() as u32 / DAY * DAY;
    let first = today - 8 * DAY;
    for d in 0..8 {
        let day = first + d * DAY;
        db.query(&format!(
            "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
             window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
             unique_value, batch_id, part, inserted_at) \
             SELECT concat('sk', toString(number % 4)), 'bot', concat('d{d}_', toString(number)), \
             'llm_tokens', 'SUM', toDateTime({day} + (number * 61) % 86400 - ((number * 61) % 86400) % 60), \
             60, toInt64({day} + (number * 61) % 86400) * 1000, [], [], '{{}}', \
             toDecimal128(number % 9 + 1, 9), '', 'past-{d}', 0, now() FROM system.numbers LIMIT 20000"
        ))
        .execute()
        .await
        .expect("readings");
        tally_platform::testkit::fold_readings(&db, &format!("past-{d}")).await;
    }
    let partials = fetch_totals(
        &db,
        "SELECT customer, agent, meter, toString(sum(value_sum)), sum(events) FROM usage_partials \
         GROUP BY customer, agent, meter",
    )
    .await;
    let published = case.publish(50, 0, "sealnow").await;
    let mut current = Some(case.start());
    let sealed = || async {
        db.query(
            "SELECT count() FROM usage_seals WHERE day > toDate(0) AND day < today() \
             AND seal_id NOT IN (SELECT batch_id FROM usage_aborts)",
        )
        .fetch_one::<u64>()
        .await
        .expect("seals")
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut kills = 0;
    while sealed().await < 8 {
        assert!(
            Instant::now() < deadline,
            "sealed {} of 8 days",
            sealed().await
        );
        // each instance lives long enough to wait out its predecessor's one-second lease
        // and seal about a day before it is killed
        tokio::time::sleep(Duration::from_millis(2500)).await;
        if let Some(p) = current.take() {
            p.kill9();
            kills += 1;
        }
        current = Some(case.start());
    }
    assert!(kills >= 3, "killed {kills} times while sealing");
    case.wait_drained(Duration::from_secs(60)).await;
    if let Some(p) = current.take() {
        assert!(p.terminate().success());
    }
    // each day once, holding exactly its partials
    let per_day: Vec<(u32, u64)> = db
        .query(
            "SELECT toUInt32(toUInt32(day) * 86400) AS d, count() FROM usage_seals WHERE day > toDate(0) \
             AND seal_id NOT IN (SELECT batch_id FROM usage_aborts) GROUP BY d ORDER BY d",
        )
        .fetch_all()
        .await
        .expect("seals");
    assert_eq!(
        per_day[..8],
        (0..8).map(|d| (first + d * DAY, 1)).collect::<Vec<_>>()[..],
        "every past day sealed exactly once"
    );
    let days = fetch_totals(
        &db,
        "SELECT customer, agent, meter, toString(sum(value_sum)), sum(events) FROM usage_days \
         WHERE seal_id NOT IN (SELECT batch_id FROM usage_aborts) AND customer LIKE 'sk%' \
         GROUP BY customer, agent, meter",
    )
    .await;
    let past: Totals = partials
        .into_iter()
        .filter(|((c, _, _), _)| c.starts_with("sk"))
        .collect();
    assert_eq!(days, past, "the sealed days hold their partials");
    let now: Totals = case
        .committed()
        .await
        .into_iter()
        .filter(|((c, _, _), _)| !c.starts_with("sk"))
        .collect();
    assert_eq!(now, published.expected(), "today's events, exactly");
    case.cleanup().await;
}
