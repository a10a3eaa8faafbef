//! Issue 16, finding 2: per-customer bounds, with the real `tally-aggregator` binary on the
//! shared local stack (each case in its own streams and database).
//!
//! One customer floods (more new events in a minute than `customer_events_per_sec` × 60),
//! one sprays group-by values (more series than `groups_per_meter_day_max`), one sprays
//! UNIQUE_COUNT values, one hoards ids (more than `customer_ids_max`), and one calm
//! customer sends a few events in between. The expected verdicts are computed here, from the
//! stream itself (each message's received time, in stream order), by the rules as written in
//! the README, not by the aggregator's code. The aggregator is crashed between two steps of a
//! flush whose batch holds refused events, and restarted: the verdicts must be the same
//! (every refused event dead-lettered once with its reason and counted nowhere, every
//! accepted one counted once), and the calm customer's events all count.
//!
//! On the code before the bounds, every flooded event was counted.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use support::AggregatorProcess;
use tally_aggregator::crash::{self, CrashPoint};
use tally_platform::streams;
use tally_platform::testkit::TestEnv;

const BINARY: &str = env!("CARGO_BIN_EXE_tally-aggregator");

/// Tokens summed (the flood), tool calls counted by tool (the series), sessions counted
/// distinct (the values).
const METERS: &str = r#"
[[meters]]
slug = "llm_tokens"
event_type = "llm.tokens"
aggregation = "SUM"
value_property = "$.tokens"

[[meters]]
slug = "tool_calls"
event_type = "tool.call"
aggregation = "COUNT"
group_by = { tool = "$.tool" }

[[meters]]
slug = "sessions"
event_type = "session.seen"
aggregation = "UNIQUE_COUNT"
value_property = "$.session"
"#;

/// The bounds of the case (what the oracle applies too).
struct Bounds {
    per_minute: usize,
    ids: usize,
    groups: usize,
    values: usize,
}

struct Case {
    env: TestEnv,
    js: jetstream::Context,
    config: PathBuf,
    log: PathBuf,
}

impl Case {
    async fn new(name: &str, b: &Bounds) -> Case {
        let env = TestEnv::new(name).await;
        let dir = std::env::temp_dir().join(format!("tally-limits-{}", env.clickhouse.database));
        let aggregator = format!(
            "batch_max_events = 100\nbatch_max_wait_ms = 200\nack_wait_secs = 2\n\
             customer_events_per_sec = {}\ncustomer_ids_max = {}\n\
             groups_per_meter_day_max = {}\nunique_values_per_meter_day_max = {}",
            b.per_minute / 60,
            b.ids,
            b.groups,
            b.values
        );
        let config = support::write_config(&dir, &env, &aggregator, METERS);
        let client = async_nats::connect(&env.nats.url).await.expect("NATS");
        let js = jetstream::new(client);
        streams::ensure(&js, &env.nats).await.expect("streams");
        Case {
            js,
            log: dir.join("aggregator.log"),
            config,
            env,
        }
    }

    async fn publish(&self, customer: &str, id: &str, ty: &str, data: &str) {
        let body = format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"bot","subject":"{customer}","type":"{ty}","time":"{}","data":{data}}}"#,
            Utc::now().to_rfc3339()
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            tally_domain::nats_msg_id(customer, "bot", id).as_str(),
        );
        let subject = format!("{}.{customer}.bot", self.env.nats.subject_prefix);
        self.js
            .publish_with_headers(subject, headers, body.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    /// Every message of the usage stream in stream order: (seq, received secs, customer,
    /// type, the value a meter is grouped or counted by).
    async fn messages(&self) -> Vec<(u64, i64, String, String, String)> {
        let mut stream = self
            .js
            .get_stream(&self.env.nats.stream)
            .await
            .expect("stream");
        let last = stream.info().await.expect("info").state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let m = stream.get_raw_message(seq).await.expect("message");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
            let ty = v["type"].as_str().unwrap_or_default().to_owned();
            let key = match ty.as_str() {
                "tool.call" => v["data"]["tool"].as_str().unwrap_or_default().to_owned(),
                "session.seen" => v["data"]["session"].as_str().unwrap_or_default().to_owned(),
                _ => String::new(),
            };
            let customer = v["subject"].as_str().unwrap_or_default().to_owned();
            out.push((seq, m.time.unix_timestamp(), customer, ty, key));
        }
        out
    }

    /// The refused messages recorded in the dead-letter stream: stream seq -> reason, and how
    /// many records there are in all.
    async fn dead_letters(&self) -> (BTreeMap<u64, String>, u64) {
        let mut dlq = self
            .js
            .get_stream(&self.env.nats.dlq_stream)
            .await
            .expect("DLQ");
        let info = dlq.info().await.expect("DLQ info").state.clone();
        let mut out = BTreeMap::new();
        for seq in 1..=info.last_sequence {
            if let Ok(m) = dlq.get_raw_message(seq).await {
                let r: serde_json::Value = serde_json::from_slice(&m.payload).expect("record");
                out.insert(
                    r["stream_seq"].as_u64().expect("stream_seq"),
                    r["reason"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        (out, info.messages)
    }

    /// Stream sequences of the raw events that count, and how many rows they have.
    async fn committed(&self) -> (BTreeSet<u64>, u64) {
        let seqs: Vec<u64> = self
            .env
            .db()
            .query(
                "SELECT stream_seq FROM usage_raw \
                 WHERE batch_id NOT IN (SELECT batch_id FROM usage_aborts)",
            )
            .fetch_all()
            .await
            .expect("usage_raw");
        let rows = seqs.len() as u64;
        (seqs.into_iter().collect(), rows)
    }

    async fn wait_drained(&self) {
        assert!(
            streams::wait_drained(
                &self.js,
                &self.env.nats.stream,
                "aggregator",
                Duration::from_secs(90)
            )
            .await,
            "not drained; log: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    async fn cleanup(self) {
        let _ = std::fs::remove_dir_all(self.config.parent().expect("dir"));
        self.env.cleanup().await;
    }
}

/// The verdicts the README's rules give, message by message in stream order: `None` to count
/// it, else the reason code.
fn oracle(
    messages: &[(u64, i64, String, String, String)],
    b: &Bounds,
) -> BTreeMap<u64, Option<&'static str>> {
    let mut per_minute: HashMap<(String, i64), usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut series: HashMap<(String, String, i64), HashSet<String>> = HashMap::new();
    let mut out = BTreeMap::new();
    for (seq, received, customer, ty, key) in messages {
        let minute = received.div_euclid(60);
        let day = received.div_euclid(86_400);
        let in_minute = per_minute.entry((customer.clone(), minute)).or_default();
        let held = ids.entry(customer.clone()).or_default();
        let set = series
            .entry((customer.clone(), ty.clone(), day))
            .or_default();
        let limit = if ty == "session.seen" {
            b.values
        } else {
            b.groups
        };
        let verdict = if *in_minute >= b.per_minute {
            Some("rate_limited")
        } else if *held >= b.ids {
            Some("too_many_ids")
        } else if !key.is_empty() && !set.contains(key) && set.len() >= limit {
            Some(if ty == "session.seen" {
                "too_many_values"
            } else {
                "too_many_groups"
            })
        } else {
            None
        };
        if verdict.is_none() {
            *in_minute += 1;
            *held += 1;
            if !key.is_empty() {
                set.insert(key.clone());
            }
        }
        out.insert(*seq, verdict);
    }
    out
}

/// Checks committed events and dead letters against the oracle; returns the verdicts.
async fn assert_verdicts(case: &Case, b: &Bounds) -> BTreeMap<u64, Option<&'static str>> {
    let messages = case.messages().await;
    let expected = oracle(&messages, b);
    let (committed, rows) = case.committed().await;
    let (dead, records) = case.dead_letters().await;
    let want_committed: BTreeSet<u64> = expected
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(s, _)| *s)
        .collect();
    let want_dead: BTreeMap<u64, String> = expected
        .iter()
        .filter_map(|(s, v)| v.map(|r| (*s, r.to_owned())))
        .collect();
    assert_eq!(committed, want_committed, "the events that count");
    assert_eq!(rows, want_committed.len() as u64, "each counted once");
    assert_eq!(dead, want_dead, "the refused events and their reasons");
    assert_eq!(records, want_dead.len() as u64, "one dead letter each");
    expected
}

/// Waits, if needed, until a minute has at least 15 s left, so the flood's first hundred
/// events share one minute (the oracle is exact either way; the counts asserted need it).
async fn early_in_a_minute() {
    use chrono::Timelike;
    let second = Utc::now().second();
    if second > 45 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_at_its_bounds_gets_the_same_verdicts_after_a_crash_and_never_touches_another()
{
    let b = Bounds {
        per_minute: 60,
        ids: 100_000,
        groups: 4,
        values: 5,
    };
    for point in [CrashPoint::AfterDeadLetters, CrashPoint::AfterMarker] {
        let case = Case::new(&format!("limits_{}", point.name()), &b).await;
        early_in_a_minute().await;
        // the first batch (100 messages) holds 60 accepted and 40 refused floods
        for i in 0..100 {
            case.publish("flood", &format!("f{i}"), "llm.tokens", r#"{"tokens":1}"#)
                .await;
        }
        for i in 0..12 {
            case.publish(
                "spray",
                &format!("s{i}"),
                "tool.call",
                &format!(r#"{{"tool":"t{i}"}}"#),
            )
            .await;
            case.publish(
                "uniq",
                &format!("u{i}"),
                "session.seen",
                &format!(r#"{{"session":"x{}"}}"#, i % 9),
            )
            .await;
            case.publish("calm", &format!("c{i}"), "llm.tokens", r#"{"tokens":7}"#)
                .await;
            case.publish("flood", &format!("g{i}"), "llm.tokens", r#"{"tokens":1}"#)
                .await;
        }
        let first = AggregatorProcess::start_with_env(
            BINARY,
            &case.config,
            &case.log,
            crash::ENV,
            point.name(),
        );
        let status = first
            .wait_exit(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{}: the crash point was not reached", point.name()));
        assert!(!status.success(), "{}: it crashed", point.name());
        let second = AggregatorProcess::start(BINARY, &case.config, &case.log);
        case.wait_drained().await;
        assert!(second.terminate().success(), "clean stop");
        let verdicts = assert_verdicts(&case, &b).await;
        let refused = |reason: &str| verdicts.values().filter(|v| **v == Some(reason)).count();
        assert!(refused("rate_limited") >= 40, "{verdicts:?}");
        assert_eq!(refused("too_many_groups"), 8);
        assert_eq!(
            refused("too_many_values"),
            4,
            "x0..x8: five distinct, x5..x8 refused"
        );
        // the calm customer shares the minute with the flood and loses nothing
        let calm: u64 = case
            .env
            .db()
            .query("SELECT count() FROM usage_raw WHERE customer = 'calm' AND batch_id NOT IN (SELECT batch_id FROM usage_aborts)")
            .fetch_one()
            .await
            .expect("calm");
        assert_eq!(calm, 12);
        case.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_holds_at_most_its_share_of_the_dedup_set_across_a_restart() {
    let b = Bounds {
        per_minute: 60_000,
        ids: 50,
        groups: 100,
        values: 100,
    };
    let case = Case::new("limits_ids", &b).await;
    for i in 0..40 {
        case.publish("hoard", &format!("h{i}"), "llm.tokens", r#"{"tokens":1}"#)
            .await;
    }
    let first = AggregatorProcess::start(BINARY, &case.config, &case.log);
    case.wait_drained().await;
    assert!(first.terminate().success(), "clean stop");
    // the restarted instance counts the 40 it finds committed
    for i in 40..80 {
        case.publish("hoard", &format!("h{i}"), "llm.tokens", r#"{"tokens":1}"#)
            .await;
        if i % 4 == 0 {
            case.publish("calm", &format!("c{i}"), "llm.tokens", r#"{"tokens":1}"#)
                .await;
        }
    }
    let second = AggregatorProcess::start(BINARY, &case.config, &case.log);
    case.wait_drained().await;
    assert!(second.terminate().success(), "clean stop");
    let verdicts = assert_verdicts(&case, &b).await;
    assert_eq!(
        verdicts
            .values()
            .filter(|v| **v == Some("too_many_ids"))
            .count(),
        30
    );
    case.cleanup().await;
}
