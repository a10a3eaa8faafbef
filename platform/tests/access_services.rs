//! Each service connects to ClickHouse as its own user, set only through the documented
//! overrides (`TALLY_CLICKHOUSE__USER`, `TALLY_CLICKHOUSE__PASSWORD`), on a ClickHouse 18.16 of
//! this test's own with the generated users.xml: the migrator creates the schema; the real
//! `tally-aggregator` binary (its `run`, over the shared NATS on a stream of this test's own)
//! commits usage as `tally_aggregator`, which is refused DROP and ALTER; the rater's user reads
//! `v_usage` and writes `charges`, and is refused DROP and ALTER.
//!
//! Known 18.16 limit, documented in docs/SECURITY.md: users.xml cannot restrict INSERT per
//! table, so "the aggregator cannot write charges" and "the rater cannot write usage" hold on
//! current ClickHouse only, through the roles of `migrations/0009_service_roles.sql`.
//!
//! Needs `target/<profile>/tally-aggregator` (`cargo build --workspace`, which `cargo test
//! --workspace` does) and a nats-server at `TALLY_TEST_NATS_URL` (default the local stack's).

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{run, service, start, users};
use tally_platform::access::Service;
use tally_platform::own_server::{free_port, temp_dir};
use tally_platform::{migrate, streams, ClickHouseConfig, NatsConfig};

/// The aggregator process; killed on drop, its log kept for failure messages.
struct Aggregator {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Aggregator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `target/<profile>/tally-aggregator`, beside this test's `deps/` directory.
fn aggregator_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("tally-aggregator"))
        .expect("the test binary lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p tally-aggregator",
        bin.display()
    );
    bin
}

fn nats_config() -> NatsConfig {
    let unique = format!("access_{}_{}", std::process::id(), free_port().unwrap());
    NatsConfig {
        url: std::env::var("TALLY_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        stream: format!("T_{unique}"),
        subject_prefix: format!("t_{unique}"),
        dlq_stream: format!("T_{unique}_DLQ"),
        dlq_subject_prefix: format!("t_{unique}_dlq"),
        ..NatsConfig::default()
    }
}

/// Starts `tally-aggregator` with a configuration naming no ClickHouse user: the user and
/// password come from the environment, as docs/SECURITY.md tells operators to set them.
fn start_aggregator(nats: &NatsConfig, clickhouse_url: &str) -> Aggregator {
    let dir = temp_dir("access-aggregator").unwrap();
    let config = format!(
        r#"[nats]
url = "{url}"
stream = "{stream}"
subject_prefix = "{prefix}"
dlq_stream = "{dlq}"
dlq_subject_prefix = "{dlq_prefix}"

[clickhouse]
url = "{clickhouse_url}"
database = "tally"

[aggregator]
batch_max_wait_ms = 100
metrics_addr = "127.0.0.1:{metrics}"

[[meters]]
slug = "llm_tokens"
event_type = "llm.tokens"
aggregation = "SUM"
value_property = "$.tokens"
"#,
        url = nats.url,
        stream = nats.stream,
        prefix = nats.subject_prefix,
        dlq = nats.dlq_stream,
        dlq_prefix = nats.dlq_subject_prefix,
        metrics = free_port().unwrap(),
    );
    std::fs::write(dir.join("tally.toml"), config).unwrap();
    let log = dir.join("aggregator.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(aggregator_binary())
        .arg("--config")
        .arg(dir.join("tally.toml"))
        .env("TALLY_CLICKHOUSE__USER", Service::Aggregator.user())
        .env(
            "TALLY_CLICKHOUSE__PASSWORD",
            support::password(Service::Aggregator),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("starting tally-aggregator");
    Aggregator { child, log }
}

async fn publish_usage(js: &async_nats::jetstream::Context, nats: &NatsConfig, now: &str) {
    let body = format!(
        r#"{{"specversion":"1.0","id":"e1","source":"bot","subject":"acme","type":"llm.tokens","time":"{now}","data":{{"tokens":10,"model":"m","kind":"input"}}}}"#
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "acme:bot:e1");
    js.publish_with_headers(
        format!("{}.acme.bot", nats.subject_prefix),
        headers,
        body.into(),
    )
    .await
    .expect("publish")
    .await
    .expect("publish ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_and_the_rater_work_as_their_own_users_within_their_rights() {
    let server = start(&users()).await;
    let migrator = ClickHouseConfig {
        url: server.url.clone(),
        database: "tally".into(),
        user: Service::Migrate.user().into(),
        password: support::password(Service::Migrate),
        ..ClickHouseConfig::default()
    };
    migrate::apply(&migrator).await.expect("migrations");

    let nats = nats_config();
    let client = async_nats::connect(&nats.url)
        .await
        .expect("a nats-server at TALLY_TEST_NATS_URL (scripts/stack.sh up)");
    let js = async_nats::jetstream::new(client);
    streams::ensure(&js, &nats).await.expect("streams");
    let aggregator = start_aggregator(&nats, &server.url);

    let admin = clickhouse::Client::default()
        .with_url(&server.url)
        .with_database("tally")
        .with_validation(false);
    let now: String = admin
        .query("SELECT toString(now())") // the server runs in UTC
        .fetch_one()
        .await
        .unwrap();
    publish_usage(&js, &nats, &format!("{}Z", now.replace(' ', "T"))).await;

    let mut committed = 0u64;
    for _ in 0..300 {
        committed = admin
            .query("SELECT count() FROM usage_batches")
            .fetch_one()
            .await
            .unwrap();
        if committed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        committed > 0,
        "the aggregator committed nothing as tally_aggregator; its log:\n{}",
        aggregator.log()
    );
    drop(aggregator);

    let agg = service(&server, Service::Aggregator);
    for forbidden in [
        "DROP TABLE usage_events",
        "ALTER TABLE usage_events DELETE WHERE 1 = 1",
        "DROP TABLE charges",
        "ALTER TABLE invoices DELETE WHERE 1 = 1",
    ] {
        assert!(
            run(&agg, forbidden).await.is_err(),
            "aggregator ran: {forbidden}"
        );
    }

    let rater = service(&server, Service::Rater);
    let events: u64 = rater
        .query("SELECT toUInt64(sum(event_count)) FROM v_usage WHERE meter = 'llm_tokens'")
        .fetch_one()
        .await
        .expect("the rater reads v_usage");
    assert_eq!(events, 1);
    run(
        &rater,
        "INSERT INTO charges (charge_id, customer, meter) VALUES ('ch-1', 'acme', 'llm_tokens')",
    )
    .await
    .expect("the rater writes charges");
    for forbidden in [
        "DROP TABLE charges",
        "ALTER TABLE charges DELETE WHERE 1 = 1",
        "ALTER TABLE usage_readings DELETE WHERE 1 = 1",
        "TRUNCATE TABLE usage_events",
    ] {
        assert!(
            run(&rater, forbidden).await.is_err(),
            "rater ran: {forbidden}"
        );
    }

    // every stream the aggregator declared: the feed reserves 1 GiB of the server's storage
    let feed = tally_platform::feed::FeedConfig::for_nats(&nats);
    for stream in [
        nats.stream.clone(),
        nats.dlq_stream.clone(),
        feed.stream,
        format!("KV_{}_AGGREGATORS", nats.stream),
    ] {
        let _ = js.delete_stream(&stream).await;
    }
}
