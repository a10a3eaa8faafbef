//! Issue 17: conflicting stored catalog records, as two racing API instances leave them,
//! never halt rating for every customer. Over the real ClickHouse (its own database), rows
//! are inserted directly beside a bootstrapped catalog:
//!
//! - `raced`: two bodies for one subscription record (`pro`, recorded first; `max`, recorded
//!   5 s later, whose body sorts first): the first recorded (`pro`) is in force.
//! - `tie`: two bodies for one record recorded in the same second: the smallest body
//!   (`max`) is in force, whatever the order the rows were inserted in.
//! - plan `pro` version 2 (from December) stored twice: flat 40 (recorded first) and flat 20
//!   (a second later): 40 is in force.
//! - meter `calls` version 2 stored twice: the first recorded is kept.
//! - `split`: two product lines pricing `calls` (each valid alone): quarantined, no charge.
//! - `good`: on `pro`, rated normally.
//!
//! On the old code the stored catalog did not build (a `Conflict`/`Unreadable` error) and no
//! customer was rated. Golden amounts (minor units, flat fees of `calls` per month): `pro` v1
//! 30.00, `pro` v2 40.00, `max` 50.00. November: good 3000, raced 3000, tie 5000; December:
//! good 4000, raced 4000, tie 5000.

mod common;

use tally_platform::testkit::TestEnv;
use tally_rater::catalog::{ConflictKind, Outcome};
use tally_rater::config::SubscriptionSpec;
use tally_rater::store::{CatalogSource, CatalogStoreError};
use tally_rater::RaterConfig;

const NOV_1: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z, seconds
const DEC_1: i64 = 1_796_083_200;
const DAY: i64 = 86_400;
/// When the file was bootstrapped (seconds); the racing rows are recorded after it.
const T0: i64 = NOV_1 - 30 * DAY;

const CATALOG: &str = r#"
[[plans]]
id = "pro"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "flat", meter = "calls", amount = "30" }]
[[plans]]
id = "max"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "flat", meter = "calls", amount = "50" }]
[[subscriptions]]
customer = "good"
plan = "pro"
[[subscriptions]]
customer = "split"
plan = "pro"
"#;

fn source() -> CatalogSource {
    CatalogSource {
        rater: RaterConfig::default(),
        features: tally_platform::Features::default(),
    }
}

fn sub(json: serde_json::Value) -> SubscriptionSpec {
    serde_json::from_value(json).expect("a subscription")
}

/// Appends a row as a racing writer would (its identity, body and `recorded_at`); a value
/// of digits only is a number (a version).
async fn insert(db: &clickhouse::Client, table: &str, columns: &str, values: &[&str], at: i64) {
    let values: Vec<String> = values
        .iter()
        .map(|v| {
            if v.bytes().all(|b| b.is_ascii_digit()) {
                (*v).to_owned()
            } else {
                format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        })
        .collect();
    db.query(&format!(
        "INSERT INTO {table} ({columns}, body, recorded_at) VALUES ({}, toDateTime({at}))",
        values.join(", ")
    ))
    .execute()
    .await
    .expect("a racing row");
}

async fn insert_subscription(db: &clickhouse::Client, s: &SubscriptionSpec, at: i64) {
    let from = s
        .effective_from
        .expect("a dated record")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let from = match &s.line {
        Some(line) => format!("{from}#{line}"),
        None => from,
    };
    let body = serde_json::to_string(s).expect("body");
    insert(
        db,
        "catalog_subscriptions",
        "customer, effective_from",
        &[&s.customer, &from, &body],
        at,
    )
    .await;
}

/// `pro` version 2 (from December) at a flat `amount` of `calls`.
fn plan_v2(amount: &str) -> tally_rater::config::PlanSpec {
    serde_json::from_value(serde_json::json!({
        "id": "pro", "version": 2, "currency": "USD",
        "effective_from": "2026-12-01T00:00:00Z",
        "prices": [{"model": "flat", "meter": "calls", "amount": amount}]
    }))
    .expect("a plan")
}

/// How many rows `catalog_subscriptions` holds.
async fn subscription_rows(db: &clickhouse::Client) -> u64 {
    db.query("SELECT count() FROM catalog_subscriptions")
        .fetch_one::<u64>()
        .await
        .expect("count")
}

/// How many rows `catalog_plans` holds.
async fn plan_rows(db: &clickhouse::Client) -> u64 {
    db.query("SELECT count() FROM catalog_plans")
        .fetch_one::<u64>()
        .await
        .expect("count")
}

async fn insert_plan(db: &clickhouse::Client, amount: &str, at: i64) {
    let body = serde_json::to_string(&plan_v2(amount)).expect("body");
    insert(
        db,
        "catalog_plans",
        "plan_id, version",
        &["pro", "2", &body],
        at,
    )
    .await;
}

async fn insert_meter(db: &clickhouse::Client, event_type: &str, at: i64) {
    let body = format!(
        r#"{{"slug":"calls","version":2,"event_type":"{event_type}","aggregation":"COUNT"}}"#
    );
    insert(
        db,
        "catalog_meters",
        "meter, version",
        &["calls", "2", &body],
        at,
    )
    .await;
}

/// What a race leaves: see the module documentation.
async fn race(db: &clickhouse::Client) {
    common::store_catalog(db, CATALOG).await;
    let at = |plan: &str, customer: &str| {
        sub(serde_json::json!({
            "customer": customer, "plan": plan, "effective_from": "2026-11-01T00:00:00Z"
        }))
    };
    // the later body is inserted first: the recorded time decides, not the insertion order
    insert_subscription(db, &at("max", "raced"), T0 + 5).await;
    insert_subscription(db, &at("pro", "raced"), T0).await;
    insert_subscription(db, &at("pro", "tie"), T0 + 7).await;
    insert_subscription(db, &at("max", "tie"), T0 + 7).await;
    insert_plan(db, "20", T0 + 2).await;
    insert_plan(db, "40", T0 + 1).await;
    insert_meter(db, "c", T0 + 3).await;
    insert_meter(db, "c2", T0 + 4).await;
    // `split`'s second line prices `calls` too (each record passed the checks alone)
    let other = sub(serde_json::json!({
        "customer": "split", "plan": "max", "line": "other",
        "effective_from": "2026-10-01T00:00:00Z"
    }));
    insert_subscription(db, &other, T0 + 8).await;
}

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
struct Stored {
    customer: String,
    period_start: u32,
    amount_minor: i64,
}

async fn charges(db: &clickhouse::Client) -> Vec<(String, i64, i64)> {
    db.query(
        "SELECT customer, toUInt32(period_start), amount_minor FROM v_charges \
         ORDER BY customer, period_start, amount_minor",
    )
    .fetch_all::<Stored>()
    .await
    .expect("v_charges")
    .into_iter()
    .map(|c| (c.customer, i64::from(c.period_start), c.amount_minor))
    .collect()
}

/// The conflicts of a build, as (kind, outcome, identity).
fn conflicts(c: &tally_rater::Catalog) -> Vec<(ConflictKind, Outcome, String)> {
    c.conflicts()
        .iter()
        .map(|c| (c.kind, c.outcome, c.identity.clone()))
        .collect()
}

#[tokio::test]
async fn conflicting_stored_records_are_decided_and_every_other_customer_is_rated() {
    let env = TestEnv::new("rater_catalog_race").await;
    let db = env.db();
    race(&db).await;

    // (a) the stored catalog builds
    let catalog = source()
        .current(&db)
        .await
        .expect("the stored catalog builds");
    assert_eq!(
        conflicts(&catalog),
        vec![
            (
                ConflictKind::Plan,
                Outcome::SetAside,
                "plan pro v2".to_owned()
            ),
            (
                ConflictKind::Subscription,
                Outcome::SetAside,
                "subscription of raced from \"2026-11-01T00:00:00.000Z\"".to_owned()
            ),
            (
                ConflictKind::Subscription,
                Outcome::SetAside,
                "subscription of tie from \"2026-11-01T00:00:00.000Z\"".to_owned()
            ),
            (
                ConflictKind::Subscription,
                Outcome::Quarantined,
                "split".to_owned()
            ),
            (
                ConflictKind::Meter,
                Outcome::SetAside,
                "meter calls v2".to_owned()
            ),
        ]
    );
    let split = catalog
        .quarantine_of("split")
        .expect("split is quarantined");
    assert!(split.contains("calls"), "{split}");
    let plan_v2 = &catalog.conflicts()[0].detail;
    assert!(plan_v2.contains("recorded first"), "{plan_v2}");

    // (b) and (c): the pass rates everyone else, with the records recorded first
    let cfg = RaterConfig {
        lookback_secs: 5 * DAY as u64,
        ..RaterConfig::default()
    };
    let now_ms = (DEC_1 + 2 * DAY) * 1000;
    let report = tally_rater::rate_once(&db, &catalog, &cfg, now_ms)
        .await
        .expect("pass");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.conflicts, catalog.conflicts());
    let expected = vec![
        ("good".to_owned(), NOV_1, 3000),
        ("good".to_owned(), DEC_1, 4000),
        ("raced".to_owned(), NOV_1, 3000),
        ("raced".to_owned(), DEC_1, 4000),
        ("tie".to_owned(), NOV_1, 5000),
        ("tie".to_owned(), DEC_1, 5000),
    ];
    assert_eq!(charges(&db).await, expected, "split gets no charge");

    // (d) the same on a restart (a new source and build), and after the loser is appended
    // once more by a retrying writer: the first recorded stays in force
    insert_plan(&db, "20", T0 + 100).await;
    let again = source().current(&db).await.expect("builds again");
    assert_eq!(conflicts(&again), conflicts(&catalog));
    let rerun = tally_rater::rate_once(&db, &again, &cfg, now_ms + 1000)
        .await
        .expect("rerun");
    assert_eq!(rerun.charges.len(), report.charges.len());
    assert_eq!(charges(&db).await, expected);
    env.cleanup().await;
}

#[tokio::test]
async fn the_api_still_adds_records_beside_conflicts_and_refuses_the_losers() {
    let env = TestEnv::new("rater_catalog_race_api").await;
    let db = env.db();
    race(&db).await;
    let now_ms = DEC_1 * 1000;
    // another customer's record is checked against what is in force and stored
    let newcomer = sub(serde_json::json!({
        "customer": "newcomer", "plan": "pro", "effective_from": "2026-12-01T00:00:00Z"
    }));
    let added = source()
        .add_subscription(&db, newcomer, now_ms)
        .await
        .expect("stored beside the conflicts");
    assert_eq!(added.subscriptions_appended, 1);
    // re-posting the losing body is a conflict: the first recorded is in force
    let loser = sub(serde_json::json!({
        "customer": "raced", "plan": "max", "effective_from": "2026-11-01T00:00:00Z"
    }));
    match source().add_subscription(&db, loser, now_ms).await {
        Err(CatalogStoreError::Conflict { detail, .. }) => {
            assert!(detail.contains("already stored"), "{detail}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // a record of the quarantined customer that does not resolve it is refused, naming why
    let more = sub(serde_json::json!({
        "customer": "split", "plan": "pro", "effective_from": "2026-12-15T00:00:00Z"
    }));
    let rows = subscription_rows(&db).await;
    match source().add_subscription(&db, more, now_ms).await {
        Err(CatalogStoreError::Quarantined(why)) => {
            assert!(why.contains("conflict") && why.contains("calls"), "{why}");
        }
        other => panic!("a change that leaves split quarantined: {other:?}"),
    }
    let split = tally_domain::CustomerId::new("split").expect("id");
    match source()
        .cancel_subscription(&db, &split, "", now_ms, false, now_ms)
        .await
    {
        Err(CatalogStoreError::Quarantined(why)) => assert!(why.contains("conflict"), "{why}"),
        other => panic!("a quarantined customer is not cancelled: {other:?}"),
    }
    assert_eq!(subscription_rows(&db).await, rows, "nothing appended");
    // the winning body of `pro` v2 (recorded first) re-posted: accepted as stored, not
    // appended (the set-aside loser of its identity does not make the winner a loser)
    let (winner, loser) = (plan_v2("40"), plan_v2("20"));
    let again = source().add_plan(&db, winner.clone(), now_ms).await;
    assert_eq!(again.expect("the winner re-posted").plans_appended, 0);
    let again = source().add_plan(&db, winner, now_ms).await;
    assert_eq!(again.expect("and again").plans_appended, 0);
    // the losing body re-posted: a conflict, nothing appended
    let rows = plan_rows(&db).await;
    match source().add_plan(&db, loser, now_ms).await {
        Err(CatalogStoreError::Conflict { .. }) => {}
        other => panic!("the loser is a conflict: {other:?}"),
    }
    assert_eq!(plan_rows(&db).await, rows, "nothing appended");
    // a new plan version is checked against the versions in force
    let v3: tally_rater::config::PlanSpec = serde_json::from_value(serde_json::json!({
        "id": "pro", "version": 3, "currency": "USD",
        "effective_from": "2027-01-01T00:00:00Z",
        "prices": [{"model": "flat", "meter": "calls", "amount": "45"}]
    }))
    .expect("a plan");
    source()
        .add_plan(&db, v3, now_ms)
        .await
        .expect("a new version beside the conflicting one");
    let c = source().current(&db).await.expect("builds");
    assert_eq!(
        c.plans()
            .filter(|p| p.id == "pro")
            .map(|p| p.version)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // the listing says a quarantined customer is left out (an empty list would say it is on
    // the default plan) and shows the record in force of a raced one
    let (addr, stop, server) = common::http::start(db.clone()).await;
    let (status, body) = common::http::get(addr, "/v1/customers/split/subscriptions").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("catalog_conflict")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("calls")),
        "{body}"
    );
    let (status, body) = common::http::get(addr, "/v1/customers/raced/subscriptions").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["plan"], "pro", "{body}");
    // every change of the quarantined customer answers the same code
    let cancel = serde_json::json!({"customer": "split"});
    let (status, body) = common::http::post(addr, "/v1/subscriptions/cancel", &cancel).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("catalog_conflict")),
        "{body}"
    );
    let more = serde_json::json!({
        "customer": "split", "plan": "pro", "effective_from": "2026-12-20T00:00:00Z"
    });
    let (status, body) = common::http::post(addr, "/v1/subscriptions", &more).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("catalog_conflict")),
        "{body}"
    );
    // the winning plan version re-posted over HTTP: 200, not appended
    let winner = serde_json::to_value(plan_v2("40")).expect("json");
    let (status, body) = common::http::post(addr, "/v1/plans", &winner).await;
    assert_eq!(
        (status, &body["appended"]),
        (200, &serde_json::json!(false)),
        "{body}"
    );
    stop.cancel();
    server.await.expect("the server stops");
    env.cleanup().await;
}

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
struct Written {
    customer: String,
    period_start: u32,
    plan_version: u32,
    amount_minor: i64,
    computed_at: u32,
}

/// The charges of `customers` as stored, with the plan version and when they were computed.
async fn written(db: &clickhouse::Client, customers: &[&str]) -> Vec<Written> {
    db.query(
        "SELECT customer, toUInt32(period_start) AS period_start, plan_version, amount_minor, \
         toUInt32(computed_at) AS computed_at FROM v_charges WHERE has(?, customer) \
         ORDER BY customer, period_start, amount_minor",
    )
    .bind(customers)
    .fetch_all::<Written>()
    .await
    .expect("v_charges")
}

/// A plan version in force whose stored body no longer reads (here a body of `pro` v2
/// recorded before the one rated with, as a writer with a lagging clock leaves it): its
/// subscribers are quarantined and their charges stay exactly as written. On the old code
/// the version was set aside and they were not quarantined but priced on `pro` v1 again.
#[tokio::test]
async fn a_plan_version_in_force_that_no_longer_reads_leaves_its_charges_as_written() {
    let env = TestEnv::new("rater_catalog_race_unreadable").await;
    let db = env.db();
    race(&db).await;
    let cfg = RaterConfig {
        lookback_secs: 5 * DAY as u64,
        ..RaterConfig::default()
    };
    let now_ms = (DEC_1 + 2 * DAY) * 1000;
    let catalog = source().current(&db).await.expect("builds");
    tally_rater::rate_once(&db, &catalog, &cfg, now_ms)
        .await
        .expect("pass");
    let before = written(&db, &["good", "raced"]).await;
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(before
        .iter()
        .any(|c| c.plan_version == 2 && c.amount_minor == 4000));

    insert(
        &db,
        "catalog_plans",
        "plan_id, version",
        &["pro", "2", r#"{"id":"pro","version":2,"#],
        T0 - 1,
    )
    .await;
    let after = source().current(&db).await.expect("still builds");
    for customer in ["good", "raced"] {
        let why = after.quarantine_of(customer).expect("quarantined");
        assert!(why.contains("plan pro v2"), "{why}");
    }
    assert!(after.quarantine_of("tie").is_none(), "on max: rated");
    let report = tally_rater::rate_once(&db, &after, &cfg, now_ms + 3_600_000)
        .await
        .expect("the pass goes on");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        written(&db, &["good", "raced"]).await,
        before,
        "same versions, amounts and computed_at"
    );
    env.cleanup().await;
}
