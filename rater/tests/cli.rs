//! The `tally-rater` binary over a real ClickHouse (its own database): two `once` processes
//! started at the same moment, then a third run, write the same charges exactly once (the
//! hand-computed ones, taxed and converted with the rates the file bootstrapped into the
//! stored catalog), and `tally-rater explain` prints, for every charge, lines that sum exactly
//! to its amount, as does `GET /v1/charges/{id}/explain`. Committed usage is written as the aggregator commits it: rollup rows and
//! their batch marker.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use tally_platform::testkit::TestEnv;

const FILE: &str = r#"
[[meters]]
slug = "tokens"
event_type = "llm.tokens"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model", kind = "$.kind" }

[[meters]]
slug = "calls"
event_type = "tool.call"
aggregation = "COUNT"

[[plans]]
id = "book"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [
  { model = "dimensional", meter = "tokens", dimensions = ["model", "kind"], default_unit_price = "0.000003",
    rates = [{ values = ["gpt-4o", "input"], unit_price = "0.0000025" }] },
  { model = "graduated", meter = "calls", tiers = [{ up_to = "100", unit_price = "0.02" }, { unit_price = "0.01" }] },
]

[[subscriptions]]
customer = "acme"
plan = "book"
tax_region = "DE"

[[subscriptions]]
customer = "euro"
plan = "book"
currency = "EUR"

[[tax_rates]]
region = "DE"
rate_percent = "19"
effective_from = "2020-01-01T00:00:00Z"

[[fx_rates]]
from = "USD"
to = "EUR"
rate = "0.9"
effective_from = "2020-01-01T00:00:00Z"
"#;

/// 2026-01-05T00:00:00Z, in seconds.
const JAN_5: u32 = 1_767_571_200;

/// Customer, meter, aggregation, (kind, model) or none, events, value of each event.
type Window<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<(&'a str, &'a str)>,
    u64,
    &'a str,
);

/// Commits `rows` as the aggregator does: readings of one batch, then its marker; one minute
/// window per row, in order.
async fn commit_usage(db: &clickhouse::Client, rows: &[Window<'_>]) {
    let mut events = 0;
    for (i, (customer, meter, aggregation, group, n, value)) in rows.iter().enumerate() {
        let (names, values, key) = match group {
            Some((kind, model)) => (
                "['kind', 'model']".to_owned(),
                format!("['{kind}', '{model}']"),
                format!(r#"{{"kind":"{kind}","model":"{model}"}}"#),
            ),
            None => ("[]".to_owned(), "[]".to_owned(), "{}".to_owned()),
        };
        let start = JAN_5 + 60 * i as u32;
        db.query(&format!(
            "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
             window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
             unique_value, batch_id, inserted_at) \
             SELECT '{customer}', 'bot', concat('e{i}_', toString(number)), '{meter}', \
             '{aggregation}', toDateTime({start}), 60, {start}000, {names}, {values}, '{key}', \
             toDecimal128({value}, 9), '', 'b1', toDateTime({start}) FROM system.numbers LIMIT {n}"
        ))
        .execute()
        .await
        .expect("readings");
        events += n;
    }
    let _ = events;
    tally_platform::testkit::fold_readings(db, "b1").await;
}

fn rater(env: &TestEnv, config: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally-rater"));
    c.args(args)
        .arg("--config")
        .arg(config)
        .env("TALLY_CLICKHOUSE__URL", &env.clickhouse.url)
        .env("TALLY_CLICKHOUSE__DATABASE", &env.clickhouse.database)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The charges a `once` run printed, by charge id.
fn charges(out: &Output) -> BTreeMap<String, serde_json::Value> {
    assert!(
        out.status.success(),
        "tally-rater once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.stdout.is_empty(), "no charges: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let c: serde_json::Value = serde_json::from_str(l).expect("a charge as JSON");
            (c["charge_id"].as_str().expect("an id").to_owned(), c)
        })
        .collect()
}

#[derive(clickhouse::Row, serde::Deserialize, Debug, PartialEq)]
struct Stored {
    charge_id: String,
    customer: String,
    meter: String,
    group_key: String,
    currency: String,
    amount_minor: i64,
    tax_minor: i64,
    amount_with_tax_minor: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rater_processes_at_once_and_a_rerun_write_the_same_charges_and_each_explains() {
    let env = TestEnv::new("rater_cli").await;
    let db = env.db();
    commit_usage(
        &db,
        &[
            (
                "acme",
                "tokens",
                "SUM",
                Some(("input", "gpt-4o")),
                1,
                "1000000",
            ),
            (
                "acme",
                "tokens",
                "SUM",
                Some(("input", "gpt-4o")),
                1,
                "2000000",
            ),
            (
                "acme",
                "tokens",
                "SUM",
                Some(("output", "small")),
                1,
                "1234567",
            ),
            ("acme", "calls", "COUNT", None, 100, "0"),
            ("euro", "calls", "COUNT", None, 101, "0"),
        ],
    )
    .await;
    let dir = tally_platform::own_server::temp_dir("rater-cli").expect("a temp dir");
    let config = dir.join("rater.toml");
    std::fs::write(&config, FILE).expect("config written");
    let once = ["once", "--at", "2026-01-20T00:00:00Z"];

    // two processes at once: each bootstraps the file into the stored catalog and rates
    let a = rater(&env, &config, &once).spawn().expect("rater a starts");
    let b = rater(&env, &config, &once).spawn().expect("rater b starts");
    let a = charges(&a.wait_with_output().expect("rater a ends"));
    let b = charges(&b.wait_with_output().expect("rater b ends"));
    assert_eq!(a, b, "two raters at once compute the same charges");
    let again = charges(&rater(&env, &config, &once).output().expect("a rerun"));
    assert_eq!(again, a, "a second run computes the same charges");

    let stored: Vec<Stored> = db
        .query(
            "SELECT charge_id, customer, meter, group_key, currency, amount_minor, tax_minor, \
             amount_with_tax_minor FROM v_charges ORDER BY customer, meter, group_key",
        )
        .fetch_all()
        .await
        .expect("charges");
    let got: Vec<(&str, &str, &str, &str, i64, i64, i64)> = stored
        .iter()
        .map(|s| {
            (
                s.customer.as_str(),
                s.meter.as_str(),
                s.group_key.as_str(),
                s.currency.as_str(),
                s.amount_minor,
                s.tax_minor,
                s.amount_with_tax_minor,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            // 100 calls, the tier bound: 100 x 0.02 = 2.00; 19% = 0.38
            ("acme", "calls", "{}", "USD", 200, 38, 238),
            // 3,000,000 x 0.0000025 = 7.50; 19% = 1.425 -> 1.43
            (
                "acme",
                "tokens",
                r#"{"kind":"input","model":"gpt-4o"}"#,
                "USD",
                750,
                143,
                893
            ),
            // 1,234,567 x 0.000003 (the default rate) = 3.703701 -> 3.70; 19% = 0.703 -> 0.70
            (
                "acme",
                "tokens",
                r#"{"kind":"output","model":"small"}"#,
                "USD",
                370,
                70,
                440
            ),
            // 101 calls: 2.00 + 1 x 0.01 = 2.01 USD x 0.9 = 1.809 EUR -> 1.81; untaxed
            ("euro", "calls", "{}", "EUR", 181, 0, 181),
        ],
        "each charge exactly once, with the stored rates"
    );
    assert_eq!(stored.len(), a.len());
    for s in &stored {
        assert_eq!(
            a[&s.charge_id]["amount_with_tax_minor"],
            s.amount_with_tax_minor
        );
    }
    // both processes bootstrapped the same rates: they read as one entry each
    let rates = tally_rater::store::rates::load(&db)
        .await
        .expect("stored rates");
    assert_eq!(
        (rates.tax_rates().count(), rates.fx_rates().count()),
        (1, 1)
    );

    for s in &stored {
        let out = rater(&env, &config, &["explain", &s.charge_id])
            .output()
            .expect("explain runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let total = format!("({} minor units)", s.amount_with_tax_minor);
        let last = text.lines().last().unwrap_or("");
        assert!(
            last.starts_with("total ") && last.ends_with(&total),
            "{text}"
        );
        let out = rater(
            &env,
            &config,
            &["explain", &s.charge_id, "--format", "json"],
        )
        .output()
        .expect("explain runs");
        let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(e["balanced"], true, "{e}");
    }
    // the API explains the same charges with the same lines
    let (addr, stop, server) = common::http::start(db.clone()).await;
    for s in &stored {
        let (status, e) =
            common::http::get(addr, &format!("/v1/charges/{}/explain", s.charge_id)).await;
        assert_eq!(
            (status, &e["balanced"]),
            (200, &serde_json::json!(true)),
            "{e}"
        );
        let cli = rater(
            &env,
            &config,
            &["explain", &s.charge_id, "--format", "json"],
        )
        .output()
        .expect("explain runs");
        let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("JSON");
        assert_eq!(e["lines"], cli["lines"]);
    }
    stop.cancel();
    server.await.expect("the server stops");
    let euro = stored.iter().find(|s| s.customer == "euro").expect("euro");
    let out = rater(&env, &config, &["explain", &euro.charge_id])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "tier 1 (above 0 up to and including 100): 100 x 0.02 = 2.00",
        "tier 2 (above 100 and up): 1 x 0.01 = 0.01",
        "converted from USD at 0.9: 2.01 x 0.9 = 1.809",
        "rounded once to 2 decimals, half away from zero: 1.81 EUR",
        "total 1.81 EUR (181 minor units)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_rates_on_its_schedule_until_sigterm() {
    let env = TestEnv::new("rater_serve").await;
    let db = env.db();
    commit_usage(&db, &[("euro", "calls", "COUNT", None, 101, "0")]).await;
    let dir = tally_platform::own_server::temp_dir("rater-serve").expect("a temp dir");
    let config = dir.join("rater.toml");
    std::fs::write(&config, FILE).expect("config written");
    let port = tally_platform::own_server::free_port().expect("a port");
    let child = rater(&env, &config, &["serve"])
        .env("TALLY_RATER__INTERVAL_SECS", "1")
        // January 2026 is still within the lookback from today
        .env("TALLY_RATER__LOOKBACK_SECS", "63072000")
        .env("TALLY_RATER__METRICS_ADDR", format!("127.0.0.1:{port}"))
        .spawn()
        .expect("serve starts");
    let mut amounts = vec![];
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        amounts = db
            .query("SELECT amount_minor FROM v_charges")
            .fetch_all::<i64>()
            .await
            .expect("charges");
        if !amounts.is_empty() {
            break;
        }
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let out = child.wait_with_output().expect("serve ends");
    assert!(
        out.status.success(),
        "serve stops cleanly on SIGTERM: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 101 calls: 2.01 USD x 0.9 = 1.809 EUR -> 1.81
    assert_eq!(
        amounts,
        vec![181],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_imports_a_file_once_and_the_next_pass_prices_it_at_the_default_lookback() {
    let env = TestEnv::new("rater_backfill_cli").await;
    let dir = tally_platform::own_server::temp_dir("rater-backfill").expect("a temp dir");
    let config = dir.join("rater.toml");
    std::fs::write(&config, FILE).expect("config written");
    let event = |id: &str, ty: &str, time: &str, data: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"bot","subject":"acme","type":"{ty}","time":"{time}","data":{data}}}"#
        )
    };
    let file = dir.join("january.jsonl");
    let lines = [
        event(
            "h1",
            "llm.tokens",
            "2026-01-05T10:00:00Z",
            r#"{"tokens":1000000,"model":"gpt-4o","kind":"input"}"#,
        ),
        event("h2", "tool.call", "2026-01-06T10:00:00Z", "{}"),
        String::new(),
        event(
            "h3",
            "llm.tokens",
            "2026-02-01T00:00:00Z",
            r#"{"tokens":5,"model":"gpt-4o","kind":"input"}"#,
        ),
    ];
    std::fs::write(&file, lines.join("\n")).expect("file written");
    let file = file.to_str().expect("a path");
    let import = [
        "backfill",
        "--import-id",
        "jan-2026",
        "--file",
        file,
        "--from",
        "2026-01-01T00:00:00Z",
        "--to",
        "2026-02-01T00:00:00Z",
        "--reason",
        "migrated",
        "--actor",
        "ops",
    ];
    let report = |out: Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("a JSON report")
    };
    let first = report(rater(&env, &config, &import).output().expect("runs"));
    assert_eq!(
        (first["events"].as_u64(), first["imported"].as_u64()),
        (Some(3), Some(2)),
        "{first}"
    );
    assert_eq!(
        first["refused"],
        serde_json::json!({"outside_period": 1}),
        "{first}"
    );
    assert_eq!(first["examples"][0]["at"], 3, "{first}");
    let again = report(rater(&env, &config, &import).output().expect("runs"));
    assert_eq!(
        (
            again["imported"].as_u64(),
            again["already_present"].as_u64()
        ),
        (Some(0), Some(2)),
        "{again}"
    );
    // now, at the default two-day lookback: January is priced because it was imported into.
    // By hand: 1,000,000 input tokens of gpt-4o at 0.0000025 = 250 cents, one call 2 cents
    let priced = charges(&rater(&env, &config, &["once"]).output().expect("runs"));
    let mut amounts: Vec<(String, i64)> = priced
        .values()
        .filter(|c| c["customer"] == "acme")
        .map(|c| {
            (
                c["meter"].as_str().expect("a meter").to_owned(),
                c["amount_minor"].as_i64().expect("an amount"),
            )
        })
        .collect();
    amounts.sort();
    assert_eq!(
        amounts,
        [("calls".to_owned(), 2), ("tokens".to_owned(), 250)]
    );
    let actors: Vec<String> = env
        .db()
        .query("SELECT DISTINCT actor FROM usage_corrections")
        .fetch_all()
        .await
        .expect("corrections");
    assert_eq!(actors, ["cli:ops"]);
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}
