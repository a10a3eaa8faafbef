//! Corrections over the real NATS and ClickHouse: events published to JetStream and
//! committed by the real aggregator, rated and invoiced; after the period's invoice is
//! finalized, one event is voided through the rater's authenticated API. The rater's next
//! pass lowers the charge and the invoicer issues a credit note naming the correction, for
//! exactly the voided event's amount (computed by hand below, in integer cents), once. The
//! void itself is exactly once: re-sent it appends nothing, a second void of the event is
//! refused `already_voided`, and the finalized invoice never changes. Then another event is
//! amended to a lower quantity (read by the stored meters): a second note for the difference.
//! And two voids of one event sent at once: one is refused, the usage drops once; and a void
//! of an event of a sealed day (the usual case for a finalized period) reaches the rater.

use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use tally_domain::{AgentId, CustomerId, EventId};
use tally_e2e::{
    aggregator_config, api_call, catalog, invoice_numbers, start_aggregator, start_rater_api,
    wait_drained,
};
use tally_ingest::{OutgoingEvent, Publisher};
use tally_invoicer::{invoice_pass, InvoicerConfig};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_rater::RaterConfig;

/// The rater API with the real clock and an `admin` token of actor `alice`.
async fn start_api(
    env: &TestEnv,
    stop: &Shutdown,
) -> (std::net::SocketAddr, String, tokio::task::JoinHandle<()>) {
    start_rater_api(env, stop, || Utc::now().timestamp_millis()).await
}

/// The `llm_tokens` meter as the aggregator reads it, for `POST /v1/meters`.
fn meter_spec() -> serde_json::Value {
    serde_json::to_value(&tally_e2e::meter_specs()[0]).expect("a meter spec as JSON")
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Note {
    invoice_id: String,
    amount_minor: i64,
    tax_minor: i64,
    reason: String,
    lines: String,
}

async fn notes(db: &clickhouse::Client, customer: &str) -> Vec<Note> {
    db.query(
        "SELECT invoice_id, amount_minor, tax_minor, reason, lines FROM v_credit_notes \
         WHERE customer = ? ORDER BY issued_at_ms",
    )
    .bind(customer)
    .fetch_all()
    .await
    .expect("credit notes")
}

/// (status, total_minor) of the customer's invoices, oldest period first.
async fn invoices(db: &clickhouse::Client, customer: &str) -> Vec<(String, String, i64)> {
    db.query(
        "SELECT invoice_id, status, total_minor FROM v_invoices WHERE customer = ? ORDER BY period_start",
    )
    .bind(customer)
    .fetch_all()
    .await
    .expect("invoices")
}

async fn charge_minor(db: &clickhouse::Client, customer: &str) -> i64 {
    db.query("SELECT amount_minor FROM v_charges WHERE customer = ? AND meter = 'llm_tokens'")
        .bind(customer)
        .fetch_one()
        .await
        .expect("one llm_tokens charge")
}

/// Publishes the customer's events and waits until the aggregator committed them.
async fn publish(env: &TestEnv, events: &[OutgoingEvent]) {
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .expect("streams");
    let mut publisher = Publisher::new(js, &env.nats.subject_prefix, 64);
    for e in events {
        publisher.publish(e).await.expect("publish");
    }
    publisher.flush().await.expect("acks");
    wait_drained(env, "aggregator", Duration::from_secs(60)).await;
}

/// `llm.tokens` events `e0`, `e1`, ... of agent `bot-1` at `at`, one (model, kind) group.
fn token_events(customer: &str, at: chrono::DateTime<Utc>, tokens: &[i64]) -> Vec<OutgoingEvent> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, n)| OutgoingEvent {
            id: EventId::new(format!("e{i}")).expect("id"),
            customer: CustomerId::new(customer.to_owned()).expect("customer"),
            agent: AgentId::new("bot-1").expect("agent"),
            event_type: "llm.tokens".into(),
            time: at,
            data: serde_json::json!({"tokens": n, "model": "gpt-4o", "kind": "output"}),
            hold_id: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_voids_of_one_event_count_once() {
    let env = TestEnv::new("e2e_correction_race").await;
    let stop = Shutdown::new();
    let aggregator = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    let customer = format!("race{}", std::process::id());
    let at = Utc::now() - chrono::Duration::seconds(30);
    publish(&env, &token_events(&customer, at, &[1_000_000, 2_000_000])).await;
    let (addr, token, api) = start_api(&env, &stop).await;
    let time = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let void = |correction_id: &str| {
        serde_json::json!({"correction_id": correction_id, "kind": "void", "customer": customer,
            "source": "bot-1", "id": "e0", "time": time, "reason": "raced"})
    };
    let (vb, va) = (void("r-b"), void("r-a"));
    let (b, a) = tokio::join!(
        api_call(addr, Some(&token), "/v1/corrections", &vb),
        api_call(addr, Some(&token), "/v1/corrections", &va),
    );
    let mut statuses = [b.0, a.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{b:?} {a:?}");
    let refused = if b.0 == 409 { &b.1 } else { &a.1 };
    let code = refused["code"].as_str().unwrap_or_default();
    assert!(
        code == "already_voided" || code == "correction_conflict",
        "{refused}"
    );
    let listed = format!("/v1/customers/{customer}/corrections");
    let (_, body) = api_call(addr, Some(&token), &listed, &serde_json::Value::Null).await;
    let counted: Vec<&serde_json::Value> = body
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| c["counts"] == true)
        .collect();
    assert_eq!(counted.len(), 1, "{body}");
    // by hand: e1 alone, 2,000,000 tokens at 0.000003 USD = 600 cents (a void counted twice
    // would leave 1,000,000 tokens less: 0 cents)
    let db = env.db();
    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        ..RaterConfig::default()
    };
    tally_rater::rate_once(
        &db,
        &catalog("nobody"),
        &rater,
        Utc::now().timestamp_millis(),
    )
    .await
    .expect("rating");
    assert_eq!(charge_minor(&db, &customer).await, 600);
    stop.cancel();
    api.await.expect("API stops");
    aggregator
        .await
        .expect("aggregator task")
        .expect("aggregator stops cleanly");
    env.cleanup().await;
}

/// An attempt of amend `fix-1` that failed after writing its deltas and data, before its
/// correction row: what the API leaves when ClickHouse goes away between the inserts.
async fn failed_attempt(db: &clickhouse::Client, request: &serde_json::Value) {
    let valid =
        serde_json::from_value::<tally_rater::corrections::CorrectionRequest>(request.clone())
            .expect("a request")
            .validate()
            .expect("valid");
    let facts = tally_rater::store::corrections::load(db, &valid)
        .await
        .expect("facts");
    let tally_rater::corrections::Decision::Append(c, deltas) = tally_rater::corrections::decide(
        &valid,
        &facts,
        "api:alice",
        Utc::now().timestamp_millis(),
    )
    .expect("decided") else {
        panic!("a new correction")
    };
    tally_rater::store::corrections::append_effects(db, &c, &deltas, valid.change.data())
        .await
        .expect("deltas and data, no row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_id_left_by_a_failed_attempt_takes_only_the_same_content() {
    let env = TestEnv::new("e2e_correction_leftover").await;
    let stop = Shutdown::new();
    let aggregator = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    let customer = format!("left{}", std::process::id());
    let at = Utc::now() - chrono::Duration::seconds(30);
    publish(&env, &token_events(&customer, at, &[1_000_000, 2_000_000])).await;
    let (addr, token, api) = start_api(&env, &stop).await;
    let db = env.db();
    let time = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let amend = serde_json::json!({"correction_id": "fix-1", "kind": "amend",
        "customer": customer, "source": "bot-1", "id": "e0", "time": time,
        "reason": "tokens over-reported",
        "data": {"tokens": 250_000, "model": "gpt-4o", "kind": "output"}});
    let (status, body) = api_call(addr, Some(&token), "/v1/meters", &meter_spec()).await;
    assert!(status == 201 || status == 200, "{status} {body}");
    failed_attempt(&db, &amend).await;
    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        ..RaterConfig::default()
    };
    let rate = || async {
        tally_rater::rate_once(
            &db,
            &catalog("nobody"),
            &rater,
            Utc::now().timestamp_millis(),
        )
        .await
        .expect("rating");
        charge_minor(&db, &customer).await
    };
    // by hand: 3,000,000 tokens at 0.000003 USD = 900 cents; the leftover alone counts nothing
    assert_eq!(rate().await, 900);
    // the id re-used for other content: a void of the same event (old code: 201, and the
    // leftover minus 750,000 and the void's minus 1,000,000 of one window both under
    // (fix-1, revision 1), one of them read), and a void of the other event (old code: 201,
    // both e1's minus 2,000,000 and e0's leftover counted)
    for (event, what) in [("e0", "same event"), ("e1", "other event")] {
        let void = serde_json::json!({"correction_id": "fix-1", "kind": "void",
            "customer": customer, "source": "bot-1", "id": event, "time": time,
            "reason": "load test"});
        let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &void).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("correction_exists")),
            "{what}: {body}"
        );
    }
    assert_eq!(rate().await, 900, "nothing of the refused voids counts");
    // the failed attempt's own content completes it, once: e0 at 250,000 tokens, 2,250,000
    // in all at 0.000003 USD = 675 cents
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &amend).await;
    assert_eq!(
        (status, body["revision"].as_u64()),
        (201, Some(1)),
        "{body}"
    );
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &amend).await;
    assert_eq!(status, 200, "re-sent: {body}");
    assert_eq!(rate().await, 675);
    stop.cancel();
    api.await.expect("API stops");
    aggregator
        .await
        .expect("aggregator task")
        .expect("aggregator stops cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_after_finalization_gives_a_credit_note_naming_the_correction_once() {
    use serde_json::Value::Null;
    let env = TestEnv::new("e2e_corrections").await;
    let stop = Shutdown::new();
    let aggregator = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    let customer = format!("fix{}", std::process::id());
    let at = Utc::now() - chrono::Duration::seconds(30);
    // three events of one (model, kind) group: 1,000,000 + 1,000,000 + 250,000 tokens
    publish(
        &env,
        &token_events(&customer, at, &[1_000_000, 1_000_000, 250_000]),
    )
    .await;

    // the calendar month of the events (the default subscription: anchor 1, UTC)
    let start = Utc
        .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .expect("month start");
    let end = if at.month() == 12 {
        Utc.with_ymd_and_hms(at.year() + 1, 1, 1, 0, 0, 0)
    } else {
        Utc.with_ymd_and_hms(at.year(), at.month() + 1, 1, 0, 0, 0)
    }
    .single()
    .expect("month end")
    .timestamp_millis();
    assert!(start.timestamp_millis() <= at.timestamp_millis());
    let db = env.db();
    let cat = catalog("nobody");
    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        lookback_secs: 70 * 86_400,
        ..RaterConfig::default()
    };
    let inv = InvoicerConfig {
        grace_secs: 86_400,
        lookback_secs: 70 * 86_400,
        ..InvoicerConfig::default()
    };
    let (numbers, bucket) = invoice_numbers(&env).await;
    // finalized: a day of grace after the period's end
    let final_at = end + 86_400_000 + 3_600_000;
    tally_rater::rate_once(&db, &cat, &rater, final_at)
        .await
        .expect("rating");
    // by hand: 2,250,000 tokens at 0.000003 USD = 6.75 USD = 675 cents
    assert_eq!(charge_minor(&db, &customer).await, 675);
    invoice_pass(&db, Some(&numbers), &inv, final_at)
        .await
        .expect("pass");
    let before = invoices(&db, &customer).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(
        (before[0].1.as_str(), before[0].2),
        ("finalized", 675),
        "{before:?}"
    );

    let (addr, token, api) = start_api(&env, &stop).await;
    let time = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let void = |correction_id: &str, id: &str| {
        serde_json::json!({"correction_id": correction_id, "kind": "void", "customer": customer,
            "source": "bot-1", "id": id, "time": time, "reason": "test traffic billed by mistake"})
    };
    // refused: no token; a blank reason; an event that was never committed
    let (status, _) = api_call(addr, None, "/v1/corrections", &void("v-0", "e1")).await;
    assert_eq!(status, 401);
    let mut blank = void("v-0", "e1");
    blank["reason"] = " ".into();
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &blank).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_correction"))
    );
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &void("v-0", "e9")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("event_not_found"))
    );

    // the void of e1 (1,000,000 tokens), recorded with the token's actor
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &void("v-1", "e1")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["actor"], "api:alice");
    assert_eq!(body["revision"], 1);
    // re-sent: stored once; another void of the same event: refused
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &void("v-1", "e1")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &void("v-2", "e1")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("already_voided"))
    );
    let mut other = void("v-1", "e2");
    other["reason"] = "another".into();
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &other).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("correction_exists"))
    );
    let listed = format!("/v1/customers/{customer}/corrections");
    let (status, body) = api_call(addr, Some(&token), &listed, &serde_json::Value::Null).await;
    assert_eq!(status, 200);
    let listed = body.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["correction_id"], "v-1");
    assert_eq!(listed[0]["counts"], true);

    // the next passes: the charge drops to 1,250,000 tokens = 3.75 USD = 375 cents, and the
    // finalized invoice gets a credit note of 675 - 375 = 300 cents naming the correction
    let later = final_at + 3_600_000;
    tally_rater::rate_once(&db, &cat, &rater, later)
        .await
        .expect("rating after the void");
    assert_eq!(charge_minor(&db, &customer).await, 375);
    invoice_pass(&db, Some(&numbers), &inv, later)
        .await
        .expect("pass");
    let issued = notes(&db, &customer).await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    let note = &issued[0];
    assert_eq!(note.invoice_id, before[0].0);
    assert_eq!((note.amount_minor, note.tax_minor), (300, 0));
    assert!(
        note.reason.starts_with("corrections v-1 "),
        "{}",
        note.reason
    );
    let lines: serde_json::Value = serde_json::from_str(&note.lines).expect("JSON lines");
    assert_eq!(lines["corrections"], serde_json::json!(["v-1"]));
    assert_eq!(
        (
            lines["billed_minor"].as_i64(),
            lines["latest_minor"].as_i64()
        ),
        (Some(675), Some(375))
    );

    // exactly once: more passes and the re-sent void change nothing
    let (status, _) = api_call(addr, Some(&token), "/v1/corrections", &void("v-1", "e1")).await;
    assert_eq!(status, 200);
    let again = later + 3_600_000;
    tally_rater::rate_once(&db, &cat, &rater, again)
        .await
        .expect("rating again");
    assert_eq!(charge_minor(&db, &customer).await, 375);
    invoice_pass(&db, Some(&numbers), &inv, again)
        .await
        .expect("pass");
    assert_eq!(notes(&db, &customer).await.len(), 1);
    assert_eq!(
        invoices(&db, &customer).await,
        before,
        "the invoice never changes"
    );

    // an amend of e2 (250,000 tokens) to 50,000, read by the stored meters
    let (status, body) = api_call(addr, Some(&token), "/v1/meters", &meter_spec()).await;
    assert!(status == 201 || status == 200, "{status} {body}");
    let mut amend = void("m-1", "e2");
    amend["kind"] = "amend".into();
    amend["data"] = serde_json::json!({"tokens": 50_000, "model": "gpt-4o", "kind": "output"});
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &amend).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["kind"].as_str(), body["revision"].as_i64()),
        (Some("amend"), Some(1))
    );
    let (status, _) = api_call(addr, Some(&token), "/v1/corrections", &amend).await;
    assert_eq!(status, 200, "an amend re-sent is stored once");
    let mut negative = amend.clone();
    negative["correction_id"] = "m-2".into();
    negative["data"]["tokens"] = (-5).into();
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &negative).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_quantity"))
    );
    // 1,050,000 tokens = 3.15 USD = 315 cents: a second note of 375 - 315 = 60 cents
    let amended_at = again + 3_600_000;
    tally_rater::rate_once(&db, &cat, &rater, amended_at)
        .await
        .expect("rating after the amend");
    assert_eq!(charge_minor(&db, &customer).await, 315);
    invoice_pass(&db, Some(&numbers), &inv, amended_at)
        .await
        .expect("pass");
    let issued = notes(&db, &customer).await;
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!((issued[1].amount_minor, issued[1].tax_minor), (60, 0));
    let lines: serde_json::Value = serde_json::from_str(&issued[1].lines).expect("JSON lines");
    assert_eq!(lines["corrections"], serde_json::json!(["m-1", "v-1"]));
    assert_eq!(
        invoices(&db, &customer).await,
        before,
        "the invoice never changes"
    );
    // the list, a page at a time by correction id: m-1 then v-1, each counted
    let page = |q: &str| format!("/v1/customers/{customer}/corrections?{q}");
    let (status, first) = api_call(addr, Some(&token), &page("limit=1"), &Null).await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = api_call(addr, Some(&token), &page("limit=1&after=m-1"), &Null).await;
    let (_, last) = api_call(addr, Some(&token), &page("limit=1&after=v-1"), &Null).await;
    let ids = |b: &serde_json::Value| -> Vec<(String, bool)> {
        b.as_array()
            .expect("a list")
            .iter()
            .map(|c| {
                (
                    c["correction_id"].as_str().unwrap_or_default().to_owned(),
                    c["counts"] == true,
                )
            })
            .collect()
    };
    assert_eq!(ids(&first), [("m-1".to_owned(), true)]);
    assert_eq!(ids(&second), [("v-1".to_owned(), true)]);
    assert!(ids(&last).is_empty(), "{last}");
    let (status, body) = api_call(addr, Some(&token), &page("limit=5000"), &Null).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter"))
    );

    stop.cancel();
    api.await.expect("API stops");
    aggregator
        .await
        .expect("aggregator task")
        .expect("aggregator stops cleanly");
    if let Ok(client) = async_nats::connect(&env.nats.url).await {
        let _ = async_nats::jetstream::new(client)
            .delete_key_value(&bucket)
            .await;
    }
    env.cleanup().await;
}

/// Runs `sql` on the test database.
async fn exec(db: &clickhouse::Client, sql: &str) {
    db.query(sql).execute().await.expect("insert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_applies_to_a_sealed_day_and_the_rater_prices_it() {
    let env = TestEnv::new("e2e_correction_sealed").await;
    let db = env.db();
    // October 5th 2026 sealed by partition 0: one day row of 3,000,000 tokens (two events),
    // and the committed reading of e1 (1,000,000 tokens at 01:00) the void looks up
    let day = Utc
        .with_ymd_and_hms(2026, 10, 5, 0, 0, 0)
        .single()
        .expect("day")
        .timestamp();
    let at_ms = (day + 3600) * 1000 + 5;
    exec(
        &db,
        "INSERT INTO usage_seals VALUES (0, toDate(0), 'reg', 0, now())",
    )
    .await;
    exec(
        &db,
        &format!(
            "INSERT INTO usage_seals VALUES (0, toDate(toDateTime({day})), 'seal-1', 1, now())"
        ),
    )
    .await;
    exec(
        &db,
        &format!(
            "INSERT INTO usage_days VALUES (toDate(toDateTime({day})), 'acme', 'bot-1', 'llm_tokens', \
             'SUM', ['model', 'kind'], ['gpt-4o', 'output'], '{{\"kind\":\"output\",\"model\":\"gpt-4o\"}}', 2, \
             toDecimal128(3000000, 9), toDecimal128(1000000, 9), toDecimal128(2000000, 9), \
             toDecimal128(0, 9), 0, '', [], 'seal-1', 0, now())"
        ),
    )
    .await;
    exec(
        &db,
        &format!(
            "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, window_start, \
             window_secs, time_ms, group_names, group_values, group_key, value, unique_value, batch_id, \
             inserted_at) VALUES ('acme', 'bot-1', 'e1', 'llm_tokens', 'SUM', toDateTime({}), 60, {at_ms}, \
             ['model', 'kind'], ['gpt-4o', 'output'], '{{\"kind\":\"output\",\"model\":\"gpt-4o\"}}', \
             toDecimal128(1000000, 9), '', 'b-1', now())",
            day + 3600
        ),
    )
    .await;
    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        lookback_secs: 40 * 86_400,
        ..RaterConfig::default()
    };
    let now = Utc
        .with_ymd_and_hms(2026, 11, 2, 0, 0, 0)
        .single()
        .expect("now")
        .timestamp_millis();
    // before the void: 3,000,000 tokens at 0.000003 USD = 900 cents
    tally_rater::rate_once(&db, &catalog("nobody"), &rater, now)
        .await
        .expect("rating");
    assert_eq!(charge_minor(&db, "acme").await, 900);
    // a leftover of a failed earlier attempt under the same correction id at another revision
    // (deltas written, correction row not): it never counts
    exec(
        &db,
        &format!(
            "INSERT INTO usage_correction_deltas VALUES ('v-1', 'acme', 'bot-1', 'e1', 2, 'llm_tokens', \
             'SUM', toDateTime({}), 60, ['model', 'kind'], ['gpt-4o', 'output'], \
             '{{\"kind\":\"output\",\"model\":\"gpt-4o\"}}', -1, toDecimal128(-500000, 9), now(), '')",
            day + 3600
        ),
    )
    .await;
    let time = chrono::DateTime::from_timestamp_millis(at_ms)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let req: tally_rater::corrections::CorrectionRequest =
        serde_json::from_value(serde_json::json!({
        "correction_id": "v-1", "kind": "void", "customer": "acme", "source": "bot-1", "id": "e1",
        "time": time, "reason": "sealed"}))
        .expect("request");
    // an amend of an event whose raw row is not kept cannot read the new data: refused, and
    // nothing is written (it used to remove the whole event while recorded as an amend)
    let amend: tally_rater::corrections::CorrectionRequest =
        serde_json::from_value(serde_json::json!({
        "correction_id": "a-1", "kind": "amend", "customer": "acme", "source": "bot-1", "id": "e1",
        "time": time, "reason": "sealed",
        "data": {"tokens": 500_000, "model": "gpt-4o", "kind": "output"}}))
        .expect("request");
    let refused = tally_rater::store::corrections::correct(
        &db,
        &amend.validate().expect("valid"),
        "api:alice",
        0,
    )
    .await
    .expect_err("an amend without the event's type is refused");
    assert_eq!(refused.code(), "invalid_correction", "{refused}");
    let valid = req.validate().expect("valid");
    let (c, appended) = tally_rater::store::corrections::correct(&db, &valid, "api:alice", 0)
        .await
        .expect("voided");
    assert!(appended);
    assert_eq!(c.revision, 1);

    // the next pass prices October from the sealed day plus the void: 2,000,000 tokens = 600
    tally_rater::rate_once(&db, &catalog("nobody"), &rater, now + 1000)
        .await
        .expect("rating");
    assert_eq!(charge_minor(&db, "acme").await, 600);
    env.cleanup().await;
}
