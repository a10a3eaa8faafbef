//! Isolation for tests against the real servers: each test gets its own JetStream stream
//! names, subject prefix and ClickHouse database, so tests run in parallel and never see each
//! other's data. Server addresses come from `TALLY_TEST_NATS_URL` and
//! `TALLY_TEST_CLICKHOUSE_URL` (defaults: the local stack's loopback ports).

use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::{ClickHouseConfig, NatsConfig};
use crate::{migrate, store};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The partials of one batch of readings (see [`fold_readings`]); shared with tests/sql.
const FOLD_READINGS_SQL: &str = include_str!("../../tests/sql/fold_readings.sql");

/// One test's private corner of NATS and ClickHouse.
pub struct TestEnv {
    pub nats: NatsConfig,
    pub clickhouse: ClickHouseConfig,
}

/// Completes a batch of readings a fixture inserted into `usage_meter_readings` under
/// `batch_id` the way the aggregator completes its batches: the batch's window partials
/// (what billing reads). The batch counts from then on (it is not aborted).
pub async fn fold_readings(db: &clickhouse::Client, batch_id: &str) {
    db.query(FOLD_READINGS_SQL)
        .bind(batch_id)
        .execute()
        .await
        .unwrap_or_else(|e| panic!("folding the readings of batch {batch_id}: {e}"));
}

/// One committed one-minute window of `meter` (`aggregation`, e.g. `SUM`) for `customer` at
/// `at_secs`: a reading of agent `bot`, event `e-<batch>`, with the group-by values `groups`
/// (names sorted, simple values), inserted under `batch` and folded ([`fold_readings`]).
#[allow(clippy::too_many_arguments)]
pub async fn commit_window(
    db: &clickhouse::Client,
    customer: &str,
    meter: &str,
    aggregation: &str,
    at_secs: i64,
    groups: &[(&str, &str)],
    value: &str,
    batch: &str,
) {
    let quoted = |xs: Vec<&str>| {
        xs.iter()
            .map(|x| format!("'{x}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names = quoted(groups.iter().map(|g| g.0).collect());
    let values = quoted(groups.iter().map(|g| g.1).collect());
    let key = groups
        .iter()
        .map(|(n, v)| format!("\"{n}\":\"{v}\""))
        .collect::<Vec<_>>()
        .join(",");
    db.query(&format!(
        "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
         window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
         unique_value, stream_seq, batch_id, part, inserted_at) VALUES \
         ('{customer}', 'bot', 'e-{batch}', '{meter}', '{aggregation}', toDateTime({at_secs}), \
          60, {ms}, [{names}], [{values}], '{{{key}}}', toDecimal128('{value}', 9), '', 0, \
          '{batch}', 0, now())",
        ms = at_secs * 1000,
    ))
    .execute()
    .await
    .unwrap_or_else(|e| panic!("inserting the readings of batch {batch}: {e}"));
    fold_readings(db, batch).await;
}

impl TestEnv {
    /// Names everything after `test` plus a unique suffix and applies the migrations.
    pub async fn new(test: &str) -> TestEnv {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        let unique = format!("{tag}_{}_{n}_{nanos:x}", std::process::id());
        let nats = NatsConfig {
            url: std::env::var("TALLY_TEST_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            stream: format!("T_{unique}"),
            subject_prefix: format!("t_{unique}"),
            dlq_stream: format!("T_{unique}_DLQ"),
            dlq_subject_prefix: format!("t_{unique}_dlq"),
            // no limits: JetStream reserves a limit's bytes on the server, and test streams
            // (benchmarks' included) hold what they are given; tests of the limits set them
            max_bytes: -1,
            dlq_max_bytes: -1,
            ..NatsConfig::default()
        };
        let clickhouse = ClickHouseConfig {
            url: std::env::var("TALLY_TEST_CLICKHOUSE_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
            database: format!("test_{unique}"),
            ..ClickHouseConfig::default()
        };
        migrate::apply(&clickhouse)
            .await
            .unwrap_or_else(|e| panic!("migrating {}: {e}", clickhouse.database));
        TestEnv { nats, clickhouse }
    }

    /// A ClickHouse client on the test's database.
    pub fn db(&self) -> clickhouse::Client {
        store::connect(&self.clickhouse)
    }

    /// Drops the database and deletes the streams (usage, dead letters, feed, lease bucket).
    pub async fn cleanup(self) {
        let _ = store::server(&self.clickhouse)
            .query(&format!(
                "DROP DATABASE IF EXISTS {}",
                self.clickhouse.database
            ))
            .execute()
            .await;
        if let Ok(client) = async_nats::connect(&self.nats.url).await {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(&self.nats.stream).await;
            let _ = js.delete_stream(&self.nats.dlq_stream).await;
            let feed = crate::feed::FeedConfig::for_nats(&self.nats);
            let _ = js.delete_stream(&feed.stream).await;
            let _ = js
                .delete_stream(format!("KV_{}_AGGREGATORS", self.nats.stream))
                .await;
        }
    }
}
