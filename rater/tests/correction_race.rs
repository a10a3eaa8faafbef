//! Issue 17, "two instances, one new correction id, two contents", over the real ClickHouse
//! (the test's own database). Two rater API instances receive the same new correction id with
//! different content at once: both find nothing stored, both write their deltas and their
//! correction rows. Here the rows are written exactly as such a race leaves them (each
//! content decided from facts loaded before either wrote, then appended), and usage must
//! follow exactly one content per id, the same for every reader and every run: the content of
//! the earliest stored row (`created_ms`), ties broken by the smaller content digest.
//!
//! Each customer (plan `pro`: tokens at 1 USD) has two June events, `e-<customer>-x` (100
//! tokens) and `e-<customer>-keep` (50); correction `c-1` voids `e-<customer>-x` (50 tokens
//! left, 5000 minor) or amends it to 30 tokens (80 left, 8000); for customer `e` the other
//! content voids `e-e-keep` instead (100 left). Before this change every reader read the
//! deltas of both contents: `e`'s usage lost both events (0 tokens), and of two deltas of the
//! same window (a void's -100, an amend's -70) one row, whichever the server returned first.
//! Then the API's re-read after writing: the loser is answered `correction_exists`.

mod common;

use common::http::{get, request, start_at};
use tally_rater::corrections::{decide, CorrectionRequest, Decision, Valid};
use tally_rater::store::corrections::{append, load, read_back};

const JUN_1: i64 = 1_780_272_000; // 2026-06-01T00:00:00Z, seconds
const JUN_15: i64 = 1_781_481_600;
const JUL_3: i64 = 1_783_036_800;

const CATALOG: &str = r#"
[[plans]]
id = "pro"
version = 1
currency = "USD"
effective_from = "2026-01-01T00:00:00Z"
prices = [{ model = "per_unit", meter = "tokens", unit_price = "1" }]
"#;

fn now_ms() -> i64 {
    JUL_3 * 1000
}

/// `customer`'s events: `e-<customer>-x` (100 tokens, with its raw row, which an amend reads
/// the type of) and `e-<customer>-keep` (50), committed.
async fn events(db: &clickhouse::Client, customer: &str) {
    common::tokens(db, customer, JUN_15, "100", &format!("{customer}-x")).await;
    common::tokens(db, customer, JUN_15 + 60, "50", &format!("{customer}-keep")).await;
    db.query(&format!(
        "INSERT INTO usage_raw (customer, agent, event_id, event_type, time, time_ms, data, \
         payload_hash, stream_seq, received_at, batch_id, part) VALUES ('{customer}', 'bot', \
         'e-{customer}-x', 't', toDateTime({JUN_15}), {ms}, \
         '{{\"n\":100,\"model\":\"gpt-4o\",\"kind\":\"input\"}}', 0, 0, now(), \
         '{customer}-x', 0)",
        ms = JUN_15 * 1000
    ))
    .execute()
    .await
    .expect("raw event");
}

/// The body of `c-1` of `customer`'s event `e-<customer>-x`: a void, or an amend to 30 tokens;
/// `keep`: a void of `e-<customer>-keep`.
fn body_of(customer: &str, kind: &str) -> serde_json::Value {
    let (kind, id, time) = match kind {
        "keep" => ("void", "keep", "2026-06-15T00:01:00Z"),
        k => (k, "x", "2026-06-15T00:00:00Z"),
    };
    let mut body = serde_json::json!({"correction_id": "c-1", "kind": kind,
        "customer": customer, "source": "bot", "id": format!("e-{customer}-{id}"),
        "time": time, "reason": "wrong quantity"});
    if kind == "amend" {
        body["data"] = serde_json::json!({"n": 30, "model": "gpt-4o", "kind": "input"});
    }
    body
}

fn request_of(customer: &str, kind: &str) -> Valid {
    serde_json::from_value::<CorrectionRequest>(body_of(customer, kind))
        .expect("request")
        .validate()
        .expect("valid")
}

/// What one API instance appends for `req` at `created_ms`, decided on facts it loaded before
/// any instance wrote (`facts`).
fn decided(
    req: &Valid,
    facts: &tally_rater::corrections::Facts,
    created_ms: i64,
) -> (
    tally_rater::corrections::Correction,
    Vec<tally_rater::corrections::Delta>,
) {
    match decide(req, facts, "api:ops", created_ms).expect("decided") {
        Decision::Append(c, deltas) => (c, deltas),
        other => panic!("an instance that found nothing stored appends: {other:?}"),
    }
}

/// The two contents of `c-1` for `customer`, as two racing instances leave them: each
/// decided before either wrote, made at the given times, appended in the given order
/// (`void_first`). `other` is the second content (`amend`, or `keep`: a void of the other
/// event). Returns the two correction rows (void, other).
async fn race(
    db: &clickhouse::Client,
    customer: &str,
    (void_ms, amend_ms): (i64, i64),
    other: &str,
    void_first: bool,
) -> (
    tally_rater::corrections::Correction,
    tally_rater::corrections::Correction,
) {
    let (void, amend) = (request_of(customer, "void"), request_of(customer, other));
    // both instances load before either writes: nothing is stored under the id
    let (void_facts, amend_facts) = (
        load(db, &void).await.expect("facts"),
        load(db, &amend).await.expect("facts"),
    );
    for f in [&void_facts, &amend_facts] {
        assert!(f.same_id.is_none() && f.leftover.is_empty());
    }
    let (vc, vd) = decided(&void, &void_facts, void_ms);
    let (ac, ad) = decided(&amend, &amend_facts, amend_ms);
    assert_eq!((vc.revision, ac.revision), (1, 1));
    let mut writes = vec![(&vc, &vd, ""), (&ac, &ad, amend.change.data())];
    if !void_first {
        writes.reverse();
    }
    for (c, d, data) in writes {
        append(db, c, d, data).await.expect("appended");
    }
    (vc, ac)
}

/// `customer`'s June tokens through the usage query API of the instance at `addr`.
async fn queried(addr: std::net::SocketAddr, customer: &str) -> String {
    let (status, body) = get(
        addr,
        &format!(
            "/v1/meters/tokens/query?customer={customer}&from=2026-06-01T00:00:00Z\
             &to=2026-07-01T00:00:00Z"
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rows = body["data"].as_array().expect("data");
    assert_eq!(rows.len(), 1, "{body}");
    rows[0]["value"].as_str().expect("a decimal").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_contents_of_one_new_correction_id_count_as_exactly_one() {
    let env = tally_platform::testkit::TestEnv::new("rater_correction_race").await;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &common::meter_specs(), 0)
        .await
        .expect("stored meters");
    let mut text = CATALOG.to_owned();
    for c in ["a", "b", "c", "e"] {
        text.push_str(&format!(
            "[[subscriptions]]\ncustomer = \"{c}\"\nplan = \"pro\"\n"
        ));
        events(&db, c).await;
    }
    let catalog = common::file_catalog(&text).expect("valid catalog");

    // a: the void made first (written first); b: the amend made first (written second);
    // c: both made in the same millisecond
    // e: the void of e-e-x made first, the void of e-e-keep written first
    race(&db, "a", (10_000, 20_000), "amend", true).await;
    race(&db, "b", (20_000, 10_000), "amend", true).await;
    let (void, amend) = race(&db, "c", (10_000, 10_000), "amend", false).await;
    race(&db, "e", (10_000, 20_000), "keep", false).await;
    assert_ne!(void.digest, amend.digest);
    let c_tokens = if void.digest < amend.digest {
        "50"
    } else {
        "80"
    };
    // (e first: on the old code its usage was 0 whichever row a read returned first)
    let want = [("e", "50"), ("a", "50"), ("b", "80"), ("c", c_tokens)];

    // two API instances over the same storage answer the same
    let (one, stop_one, server_one) = start_at(db.clone(), now_ms).await;
    let (two, stop_two, server_two) = start_at(db.clone(), now_ms).await;
    for addr in [one, two] {
        for (customer, tokens) in want {
            assert_eq!(
                queried(addr, customer).await,
                tokens,
                "{customer} via {addr}"
            );
        }
    }
    // the list shows one content per id, the one that counts
    for (customer, tokens) in want {
        let (status, list) = get(one, &format!("/v1/customers/{customer}/corrections")).await;
        assert_eq!(status, 200, "{list}");
        let rows = list.as_array().expect("a list");
        assert_eq!(rows.len(), 1, "{list}");
        let kind = if tokens == "50" { "void" } else { "amend" };
        assert_eq!(
            (
                rows[0]["kind"].as_str(),
                rows[0]["id"].as_str(),
                rows[0]["counts"].as_bool()
            ),
            (
                Some(kind),
                Some(format!("e-{customer}-x").as_str()),
                Some(true)
            ),
            "{customer}: {list}"
        );
    }

    // the rating pass prices exactly one content, the same on every run
    let minor = |tokens: &str| tokens.parse::<i64>().expect("tokens") * 100;
    let mut charged: Vec<(String, i64)> = want
        .iter()
        .map(|(c, t)| ((*c).to_owned(), minor(t)))
        .collect();
    charged.sort();
    common::rate_at(&db, &catalog, JUL_3, 5).await;
    assert_eq!(common::period(&db, JUN_1).await, charged);
    common::rate_at(&db, &catalog, JUL_3 + 60, 5).await;
    assert_eq!(common::period(&db, JUN_1).await, charged);

    stop_one.cancel();
    stop_two.cancel();
    server_one.await.expect("server stops");
    server_two.await.expect("server stops");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_whose_content_lost_is_answered_correction_exists() {
    let env = tally_platform::testkit::TestEnv::new("rater_correction_readback").await;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &common::meter_specs(), 0)
        .await
        .expect("stored meters");
    events(&db, "d").await;

    // the amend (made later) is written first, then the void (made earlier): both re-read
    // after both wrote; the void's content counts
    let (void, amend) = race(&db, "d", (10_000, 20_000), "amend", false).await;
    let lost = read_back(&db, amend.clone(), true)
        .await
        .expect_err("the amend lost");
    assert_eq!(lost.code(), "correction_exists", "{lost}");
    let (won, appended) = read_back(&db, void.clone(), true)
        .await
        .expect("the void counts");
    assert_eq!((won, appended), (void, true));

    // re-sent through the API: the void is the stored correction (200), the amend is refused
    let (addr, stop, server) = start_at(db.clone(), now_ms).await;
    let post = |kind: &str| body_of("d", kind).to_string();
    let (status, body) = request(addr, "POST", "/v1/corrections", &post("amend")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("correction_exists")),
        "{body}"
    );
    let (status, body) = request(addr, "POST", "/v1/corrections", &post("void")).await;
    assert_eq!(
        (status, body["kind"].as_str()),
        (200, Some("void")),
        "{body}"
    );
    assert_eq!(queried(addr, "d").await, "50");

    stop.cancel();
    server.await.expect("server stops");
    env.cleanup().await;
}

/// Rows written before migration 0064 carry digest '' on both tables, so two contents of one
/// id cannot be told apart by digest: the event tells them apart. `c-1` voided `e-f-x` (made
/// first) and, racing, `e-f-keep`; `c-2` voided `e-f-keep` too. `c-1`'s content is its
/// earliest row (`e-f-x`), so `e-f-keep` is `c-2`'s: each event voided exactly once, 0 tokens
/// left. Matching the deltas without the event counted `c-1`'s void of `e-f-keep` as well
/// (-50 tokens: `e-f-keep` voided twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_before_digests_count_one_event_per_correction_id() {
    let env = tally_platform::testkit::TestEnv::new("rater_correction_undigested").await;
    let db = env.db();
    tally_rater::store::registry::bootstrap(&db, &[], &common::meter_specs(), 0)
        .await
        .expect("stored meters");
    events(&db, "f").await;
    let mut y = body_of("f", "keep");
    y["correction_id"] = serde_json::json!("c-2");
    let requests = [
        (request_of("f", "void"), 10_000),
        (request_of("f", "keep"), 20_000),
        (
            serde_json::from_value::<CorrectionRequest>(y)
                .expect("request")
                .validate()
                .expect("valid"),
            30_000,
        ),
    ];
    let mut facts = Vec::new();
    for (req, _) in &requests {
        facts.push(load(&db, req).await.expect("facts"));
    }
    for ((req, made_ms), facts) in requests.iter().zip(&facts) {
        let (mut c, mut deltas) = decided(req, facts, *made_ms);
        c.digest.clear();
        for d in &mut deltas {
            d.digest.clear();
        }
        append(&db, &c, &deltas, "").await.expect("appended");
    }
    let (addr, stop, server) = start_at(db.clone(), now_ms).await;
    assert_eq!(queried(addr, "f").await, "0");
    stop.cancel();
    server.await.expect("server stops");
    env.cleanup().await;
}
