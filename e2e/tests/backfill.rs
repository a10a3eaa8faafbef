//! Backfill over the real NATS and ClickHouse: a past month's events are committed live by
//! the real aggregator, rated and invoiced (finalized); ten days later a file of that month's
//! historical events is imported through the rater's authenticated API (`POST
//! /v1/backfill`). The file holds new token and tool-call events, a duplicate line, the event
//! already committed live, one event outside the named month, one for a MAX meter and a
//! broken line: only the new events count, once. The next rating pass, with the default
//! two-day lookback, re-prices the month (its charge rises by the hand-computed amount), and
//! the invoicer, with its default settings, bills the difference as adjustment lines of the
//! next invoice naming the import. Re-running the import from the file (the command's code
//! path) changes nothing, and an imported event can then be voided (a credit note).
//! The identity committed live is found at another time within the aggregator's dedup
//! horizon, and one imported by any import at any time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use tally_domain::{AgentId, CustomerId, EventId};
use tally_e2e::{
    aggregator_config, api_call, catalog, invoice_numbers, start_aggregator, start_rater_api,
    wait_drained,
};
use tally_ingest::{OutgoingEvent, Publisher};
use tally_invoicer::{invoice_pass, InvoicerConfig};
use tally_platform::shutdown::Shutdown;
use tally_platform::testkit::TestEnv;
use tally_rater::backfill::Import;
use tally_rater::store::backfill::Importer;
use tally_rater::RaterConfig;

/// The API's clock, set by the test.
static API_NOW: AtomicI64 = AtomicI64::new(0);

fn api_now() -> i64 {
    API_NOW.load(Ordering::SeqCst)
}

/// Publishes `events` and waits until the aggregator took them all; the stream context.
async fn publish(env: &TestEnv, events: &[OutgoingEvent]) -> async_nats::jetstream::Context {
    let client = async_nats::connect(&env.nats.url).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    tally_platform::streams::ensure(&js, &env.nats)
        .await
        .expect("streams");
    let mut publisher = Publisher::new(js.clone(), &env.nats.subject_prefix, 64);
    for e in events {
        publisher.publish(e).await.expect("publish");
    }
    publisher.flush().await.expect("acks");
    wait_drained(env, "aggregator", Duration::from_secs(60)).await;
    js
}

fn month_start(year: i32, month: u32) -> DateTime<Utc> {
    let (y, m) = if month == 13 {
        (year + 1, 1)
    } else {
        (year, month)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .expect("a month start")
}

fn event(
    customer: &str,
    id: &str,
    event_type: &str,
    at: DateTime<Utc>,
    data: serde_json::Value,
) -> OutgoingEvent {
    OutgoingEvent {
        id: EventId::new(id).expect("id"),
        customer: CustomerId::new(customer.to_owned()).expect("customer"),
        agent: AgentId::new("bot-1").expect("agent"),
        event_type: event_type.into(),
        time: at,
        data,
        hold_id: None,
    }
}

fn tokens(n: i64) -> serde_json::Value {
    serde_json::json!({"tokens": n, "model": "gpt-4o", "kind": "output"})
}

/// The event as a CloudEvent line of the import file.
fn line(
    customer: &str,
    id: &str,
    event_type: &str,
    at: DateTime<Utc>,
    data: &serde_json::Value,
) -> String {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "bot-1", "subject": customer,
        "type": event_type, "time": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data})
    .to_string()
}

async fn charge(db: &clickhouse::Client, customer: &str, meter: &str, from: DateTime<Utc>) -> i64 {
    db.query(
        "SELECT amount_minor FROM v_charges WHERE customer = ? AND meter = ? \
         AND period_start = toDateTime(?)",
    )
    .bind(customer)
    .bind(meter)
    .bind(from.timestamp())
    .fetch_optional::<i64>()
    .await
    .expect("charges")
    .unwrap_or(0)
}

/// (invoice id, status, total) of the customer's invoices, oldest period first.
async fn invoices(db: &clickhouse::Client, customer: &str) -> Vec<(String, String, i64)> {
    db.query(
        "SELECT invoice_id, status, total_minor FROM v_invoices WHERE customer = ? ORDER BY period_start",
    )
    .bind(customer)
    .fetch_all()
    .await
    .expect("invoices")
}

/// (meter, amount, description, adjusted invoice) of an invoice's adjustment lines.
async fn adjustments(
    db: &clickhouse::Client,
    invoice_id: &str,
) -> Vec<(String, i64, String, String)> {
    db.query(
        "SELECT meter, amount_minor, description, adjusts_invoice_id FROM v_invoice_lines \
         WHERE (invoice_id, version) IN (SELECT invoice_id, max(version) FROM v_invoice_lines \
                WHERE invoice_id = ? GROUP BY invoice_id) AND kind = 'adjustment' ORDER BY meter",
    )
    .bind(invoice_id)
    .fetch_all()
    .await
    .expect("invoice lines")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_a_finalized_month_is_imported_once_and_billed_as_an_adjustment_naming_it() {
    let env = TestEnv::new("e2e_backfill").await;
    let stop = Shutdown::new();
    // the live path accepts last month's events here (it is a test of what follows)
    let mut agg = aggregator_config();
    agg.allowed_lateness_secs = 70 * 86_400;
    agg.dedup_horizon_secs = 71 * 86_400;
    let aggregator = start_aggregator(&env, agg, stop.clone()).await;
    let customer = format!("mig{}", std::process::id());

    // P: last calendar month; M: this one (the default subscription: monthly, UTC)
    let now = Utc::now();
    let m_start = month_start(now.year(), now.month());
    let p_start = if now.month() == 1 {
        month_start(now.year() - 1, 12)
    } else {
        month_start(now.year(), now.month() - 1)
    };
    let m_end = month_start(m_start.year(), m_start.month() + 1);
    let day = |n: i64| p_start + chrono::Duration::days(n) + chrono::Duration::hours(1);
    // live: e0 and e1 in P (1,000,000 tokens each), e2 in M (100,000 tokens)
    let live = [
        event(&customer, "e0", "llm.tokens", day(2), tokens(1_000_000)),
        event(&customer, "e1", "llm.tokens", day(2), tokens(1_000_000)),
        event(
            &customer,
            "e2",
            "llm.tokens",
            now - chrono::Duration::seconds(30),
            tokens(100_000),
        ),
    ];
    publish(&env, &live).await;

    // every pass with the default settings: nothing is tuned for the import
    let db = env.db();
    let cat = catalog("nobody");
    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        ..RaterConfig::default()
    };
    let inv = InvoicerConfig::default();
    let (numbers, bucket) = invoice_numbers(&env).await;
    // P finalized: a day of grace after its end; by hand 2,000,000 tokens at 0.000003 USD
    let t1 = m_start.timestamp_millis() + 86_400_000 + 3_600_000;
    tally_rater::rate_once(&db, &cat, &rater, t1)
        .await
        .expect("rating");
    assert_eq!(charge(&db, &customer, "llm_tokens", p_start).await, 600);
    invoice_pass(&db, Some(&numbers), &inv, t1)
        .await
        .expect("pass");
    let before = invoices(&db, &customer).await;
    let p_invoice = before[0].0.clone();
    assert_eq!(
        (before[0].1.as_str(), before[0].2),
        ("finalized", 600),
        "{before:?}"
    );

    // ten days later (P is beyond the rater's two-day lookback), the import
    let t2 = t1 + 10 * 86_400_000;
    API_NOW.store(t2, Ordering::SeqCst);
    let (addr, token, api) = start_rater_api(&env, &stop, api_now).await;
    // the stored meters the import reads with: the aggregator's two, and a MAX meter
    for spec in tally_e2e::meter_specs() {
        let spec = serde_json::to_value(&spec).expect("a meter spec");
        let (status, body) = api_call(addr, Some(&token), "/v1/meters", &spec).await;
        assert!(status == 201 || status == 200, "{status} {body}");
    }
    let peak = serde_json::json!({"slug": "gpu_peak", "event_type": "gpu.load",
        "aggregation": "MAX", "value_property": "$.load"});
    let (status, body) = api_call(addr, Some(&token), "/v1/meters", &peak).await;
    assert_eq!(status, 201, "{body}");

    let search = serde_json::json!({"tool": "search"});
    let file = [
        line(&customer, "h1", "llm.tokens", day(3), &tokens(500_000)),
        line(&customer, "h2", "llm.tokens", day(4), &tokens(250_000)),
        line(&customer, "h1", "llm.tokens", day(3), &tokens(500_000)),
        line(&customer, "e1", "llm.tokens", day(2), &tokens(1_000_000)),
        line(
            &customer,
            "h0",
            "llm.tokens",
            p_start - chrono::Duration::hours(2),
            &tokens(9_000_000),
        ),
        line(
            &customer,
            "g1",
            "gpu.load",
            day(5),
            &serde_json::json!({"load": 7}),
        ),
        line(&customer, "t1", "tool.call", day(6), &search),
        line(&customer, "t2", "tool.call", day(7), &search),
        "{\"specversion\": \"1.0\", \"id\": ".to_owned(),
    ]
    .join("\n");
    let events: Vec<serde_json::Value> = file
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| serde_json::Value::String(l.into())))
        .collect();
    let request = serde_json::json!({"import_id": "imp-lago", "reason": "migrated from Lago",
        "from": p_start.to_rfc3339(), "to": m_start.to_rfc3339(), "events": events});
    let (status, _) = api_call(addr, None, "/v1/backfill", &request).await;
    assert_eq!(status, 401);
    let mut blank = request.clone();
    blank["reason"] = " ".into();
    let (status, body) = api_call(addr, Some(&token), "/v1/backfill", &blank).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_backfill"))
    );
    let (status, report) = api_call(addr, Some(&token), "/v1/backfill", &request).await;
    assert_eq!(status, 200, "{report}");
    // h1, h2, t1, t2 imported; the second h1 and the live e1 already present
    assert_eq!(
        (
            report["events"].as_u64(),
            report["imported"].as_u64(),
            report["already_present"].as_u64()
        ),
        (Some(9), Some(4), Some(2)),
        "{report}"
    );
    assert_eq!(
        report["refused"],
        serde_json::json!({"malformed": 1, "not_importable": 1, "outside_period": 1}),
        "{report}"
    );

    // the rater, default lookback, re-prices P: 2,750,000 tokens = 825 cents, and two tool
    // calls at 0.02 USD = 4 cents
    tally_rater::rate_once(&db, &cat, &rater, t2)
        .await
        .expect("rating after the import");
    assert_eq!(charge(&db, &customer, "llm_tokens", p_start).await, 825);
    assert_eq!(charge(&db, &customer, "tool_calls", p_start).await, 4);
    invoice_pass(&db, Some(&numbers), &inv, t2)
        .await
        .expect("pass");
    // M finalized: the adjustments of 825 - 600 = 225 and 4 cents, naming P's invoice and the
    // import, next to M's 100,000 tokens (30 cents): 259
    let t3 = m_end.timestamp_millis() + 86_400_000 + 3_600_000;
    tally_rater::rate_once(&db, &cat, &rater, t3)
        .await
        .expect("rating M");
    invoice_pass(&db, Some(&numbers), &inv, t3)
        .await
        .expect("pass");
    let after = invoices(&db, &customer).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], before[0], "the finalized invoice never changes");
    assert_eq!(
        (after[1].1.as_str(), after[1].2),
        ("finalized", 259),
        "{after:?}"
    );
    let lines = adjustments(&db, &after[1].0).await;
    let amounts: Vec<(&str, i64, &str)> = lines
        .iter()
        .map(|(m, a, _, adj)| (m.as_str(), *a, adj.as_str()))
        .collect();
    assert_eq!(
        amounts,
        [
            ("llm_tokens", 225, p_invoice.as_str()),
            ("tool_calls", 4, p_invoice.as_str())
        ]
    );
    for (_, _, description, _) in &lines {
        assert!(description.ends_with("(import imp-lago)"), "{description}");
    }

    // re-running the import from the file (the command's path) changes nothing
    let mut again = Importer::start(
        &db,
        Import {
            import_id: "imp-lago".into(),
            from_ms: p_start.timestamp_millis(),
            to_ms: m_start.timestamp_millis(),
            reason: "migrated from Lago".into(),
            actor: "cli:operator".into(),
            now_ms: t3,
        },
    )
    .await
    .expect("starts");
    again.add_lines(file.as_bytes()).await.expect("imports");
    let rerun = again.finish().await.expect("imports");
    assert_eq!(
        (rerun.events, rerun.imported, rerun.already_present),
        (9, 0, 6),
        "{rerun:?}"
    );
    let later = t3 + 3_600_000;
    tally_rater::rate_once(&db, &cat, &rater, later)
        .await
        .expect("rating again");
    invoice_pass(&db, Some(&numbers), &inv, later)
        .await
        .expect("pass");
    assert_eq!(invoices(&db, &customer).await, after);
    assert_eq!(charge(&db, &customer, "llm_tokens", p_start).await, 825);

    // an imported event is corrected like a committed one: voiding h2 (250,000 tokens) lowers
    // the month to 750 cents, a credit note of 75 against the finalized invoice
    API_NOW.store(later, Ordering::SeqCst);
    let void = serde_json::json!({"correction_id": "void-h2", "kind": "void",
        "customer": customer, "source": "bot-1", "id": "h2",
        "time": day(4).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "reason": "imported twice by the old biller"});
    let (status, body) = api_call(addr, Some(&token), "/v1/corrections", &void).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["revision"], 2);
    let voided = later + 3_600_000;
    tally_rater::rate_once(&db, &cat, &rater, voided)
        .await
        .expect("rating after the void");
    assert_eq!(charge(&db, &customer, "llm_tokens", p_start).await, 750);
    invoice_pass(&db, Some(&numbers), &inv, voided)
        .await
        .expect("pass");
    let notes: Vec<(String, i64, String)> = db
        .query("SELECT invoice_id, amount_minor, lines FROM v_credit_notes WHERE customer = ?")
        .bind(&customer)
        .fetch_all()
        .await
        .expect("credit notes");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!((notes[0].0.as_str(), notes[0].1), (p_invoice.as_str(), 75));
    assert!(notes[0].2.contains("void-h2"), "{}", notes[0].2);

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

/// The sum of the customer's `llm_tokens` charges, every period.
async fn token_charges(db: &clickhouse::Client, customer: &str) -> i64 {
    db.query(
        "SELECT toInt64(sum(amount_minor)) FROM v_charges WHERE customer = ? AND meter = 'llm_tokens'",
    )
    .bind(customer)
    .fetch_one()
    .await
    .expect("charges")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_late_events_of_an_outage_are_replayed_from_the_dead_letter_stream_once() {
    let env = TestEnv::new("e2e_backfill_dlq").await;
    let stop = Shutdown::new();
    // the default lateness: an hour
    let aggregator = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    let customer = format!("out{}", std::process::id());
    let now = Utc::now();
    let outage = now - chrono::Duration::days(3);
    // two events held back three days by an outage (dead-lettered too_late), one on time
    let events = [
        event(&customer, "d1", "llm.tokens", outage, tokens(1_000_000)),
        event(&customer, "d2", "llm.tokens", outage, tokens(500_000)),
        event(
            &customer,
            "n1",
            "llm.tokens",
            now - chrono::Duration::seconds(30),
            tokens(100_000),
        ),
    ];
    let js = publish(&env, &events).await;

    let db = env.db();
    let cat = catalog("nobody");
    // the default rater lookback (two days) does not reach the outage's day by itself
    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        ..RaterConfig::default()
    };
    let now_ms = now.timestamp_millis();
    tally_rater::rate_once(&db, &cat, &rater, now_ms)
        .await
        .expect("rating");
    // by hand: n1 alone, 100,000 tokens at 0.000003 USD = 30 cents
    assert_eq!(token_charges(&db, &customer).await, 30);

    let import = |at: i64| Import {
        import_id: "outage-1".into(),
        from_ms: (outage - chrono::Duration::hours(1)).timestamp_millis(),
        to_ms: (outage + chrono::Duration::hours(1)).timestamp_millis(),
        reason: "ClickHouse outage".into(),
        actor: "cli:operator".into(),
        now_ms: at,
    };
    // the meters the import reads with, stored as `tally-rater` stores the file's
    tally_rater::store::registry::bootstrap(&db, &[], &tally_e2e::meter_specs(), now_ms)
        .await
        .expect("meters stored");
    let mut importer = Importer::start(&db, import(now_ms)).await.expect("starts");
    importer
        .add_stream(&js, &env.nats.dlq_stream, &env.nats.stream, (1, 50))
        .await
        .expect("replays");
    let report = importer.finish().await.expect("imports");
    assert_eq!(
        (report.events, report.imported, report.already_present),
        (2, 2, 0),
        "{report:?}"
    );
    // 1,600,000 tokens = 480 cents, whichever periods the days fall in (both amounts exact)
    tally_rater::rate_once(&db, &cat, &rater, now_ms + 1000)
        .await
        .expect("rating after the replay");
    assert_eq!(token_charges(&db, &customer).await, 480);

    // replayed again (the usage stream too, whose n1 is committed and d1, d2 imported)
    let mut again = Importer::start(&db, import(now_ms + 2000))
        .await
        .expect("starts");
    again
        .add_stream(&js, &env.nats.dlq_stream, &env.nats.stream, (1, 50))
        .await
        .expect("replays");
    again
        .add_stream(&js, &env.nats.stream, &env.nats.stream, (1, 50))
        .await
        .expect("replays");
    let rerun = again.finish().await.expect("imports");
    assert_eq!(
        (rerun.events, rerun.imported, rerun.already_present),
        (5, 0, 4),
        "{rerun:?}"
    );
    assert_eq!(rerun.refused.get("outside_period"), Some(&1), "{rerun:?}");
    tally_rater::rate_once(&db, &cat, &rater, now_ms + 3000)
        .await
        .expect("rating again");
    assert_eq!(token_charges(&db, &customer).await, 480);

    stop.cancel();
    aggregator
        .await
        .expect("aggregator task")
        .expect("aggregator stops cleanly");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_never_invoiced_gets_its_invoice_once_imported() {
    let env = TestEnv::new("e2e_backfill_new").await;
    let db = env.db();
    let customer = format!("new{}", std::process::id());
    let now = Utc::now();
    // three months back: no usage, no invoice, far beyond every default lookback but the
    // invoicer's adjustments'
    let q = (now.year() * 12 + now.month() as i32 - 1) - 3;
    let from = month_start(q.div_euclid(12), q.rem_euclid(12) as u32 + 1);
    let to = month_start(from.year(), from.month() + 1);
    tally_rater::store::registry::bootstrap(&db, &[], &tally_e2e::meter_specs(), 0)
        .await
        .expect("meters stored");
    let at = from + chrono::Duration::days(9);
    let file = [
        line(&customer, "x1", "llm.tokens", at, &tokens(2_000_000)),
        line(
            &customer,
            "x2",
            "tool.call",
            at,
            &serde_json::json!({"tool": "search"}),
        ),
    ]
    .join("\n");
    let now_ms = now.timestamp_millis();
    let mut importer = Importer::start(
        &db,
        Import {
            import_id: "hist".into(),
            from_ms: from.timestamp_millis(),
            to_ms: to.timestamp_millis(),
            reason: "history of a new customer".into(),
            actor: "cli:operator".into(),
            now_ms,
        },
    )
    .await
    .expect("starts");
    importer.add_lines(file.as_bytes()).await.expect("imports");
    assert_eq!(importer.finish().await.expect("imports").imported, 2);

    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        ..RaterConfig::default()
    };
    tally_rater::rate_once(&db, &catalog("nobody"), &rater, now_ms)
        .await
        .expect("rating");
    let (numbers, bucket) = invoice_numbers(&env).await;
    let inv = InvoicerConfig::default();
    invoice_pass(&db, Some(&numbers), &inv, now_ms)
        .await
        .expect("pass");
    // by hand: 2,000,000 tokens at 0.000003 USD = 600 cents, one call 2 cents
    let issued = invoices(&db, &customer).await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!((issued[0].1.as_str(), issued[0].2), ("finalized", 602));
    invoice_pass(&db, Some(&numbers), &inv, now_ms + 60_000)
        .await
        .expect("pass");
    assert_eq!(invoices(&db, &customer).await, issued, "invoiced once");
    if let Ok(client) = async_nats::connect(&env.nats.url).await {
        let _ = async_nats::jetstream::new(client)
            .delete_key_value(&bucket)
            .await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_committed_live_at_another_time_within_the_horizon_is_not_imported_again() {
    // issue 17, item 11: an event's identity is (customer, source, id), its time is not part
    // of it; before, an import found a live commit only at the exact same time
    let env = TestEnv::new("e2e_backfill_horizon").await;
    let stop = Shutdown::new();
    // the default aggregator: an hour of lateness, a day of dedup horizon (the import's
    // default horizon)
    let aggregator = start_aggregator(&env, aggregator_config(), stop.clone()).await;
    let customer = format!("hor{}", std::process::id());
    let now = Utc::now();
    let live_at = now - chrono::Duration::seconds(30);
    // live at L: w1 1,000,000 tokens, w2 100,000, w3 10,000
    let live = [
        event(&customer, "w1", "llm.tokens", live_at, tokens(1_000_000)),
        event(&customer, "w2", "llm.tokens", live_at, tokens(100_000)),
        event(&customer, "w3", "llm.tokens", live_at, tokens(10_000)),
    ];
    publish(&env, &live).await;
    let db = env.db();
    let cat = catalog("nobody");
    let rater = RaterConfig {
        default_plan: Some("ai-standard".into()),
        ..RaterConfig::default()
    };
    let now_ms = now.timestamp_millis();
    tally_rater::rate_once(&db, &cat, &rater, now_ms)
        .await
        .expect("rating");
    // by hand: 1,110,000 tokens at 0.000003 USD = 333 cents
    assert_eq!(token_charges(&db, &customer).await, 333);

    tally_rater::store::registry::bootstrap(&db, &[], &tally_e2e::meter_specs(), now_ms)
        .await
        .expect("meters stored");
    // three days later (beyond `too_recent`), files of the same identities at other times
    let import_ms = now_ms + 3 * 86_400_000;
    let import = |id: &str| Import {
        import_id: id.into(),
        from_ms: (live_at - chrono::Duration::hours(1)).timestamp_millis(),
        to_ms: (live_at + chrono::Duration::days(2)).timestamp_millis(),
        reason: "the old biller's export".into(),
        actor: "cli:operator".into(),
        now_ms: import_ms,
    };
    let run = |id: &'static str, file: String| {
        let db = db.clone();
        let import = import(id);
        async move {
            let mut importer = Importer::start(&db, import).await.expect("starts");
            importer.add_lines(file.as_bytes()).await.expect("imports");
            importer.finish().await.expect("imports")
        }
    };
    let minutes = |n: i64| live_at + chrono::Duration::minutes(n);
    // w1 five minutes later and w3 five minutes earlier: within the day of horizon, present;
    // w2 a day and a minute later: beyond the horizon (where the live path would count a
    // re-send again too), imported
    let file = [
        line(
            &customer,
            "w1",
            "llm.tokens",
            minutes(5),
            &tokens(1_000_000),
        ),
        line(&customer, "w3", "llm.tokens", minutes(-5), &tokens(10_000)),
        line(
            &customer,
            "w2",
            "llm.tokens",
            minutes(24 * 60 + 1),
            &tokens(100_000),
        ),
    ]
    .join("\n");
    // with the production profile's horizon (a week: `aggregator.dedup_horizon_secs`, which
    // the API and the command give the importer), w2 a day and a minute away is found live
    let mut wide = Importer::start(&db, import("wide")).await.expect("starts");
    wide.set_horizon_secs(7 * 86_400);
    let w2_later = line(
        &customer,
        "w2",
        "llm.tokens",
        minutes(24 * 60 + 1),
        &tokens(100_000),
    );
    wide.add_lines(w2_later.as_bytes()).await.expect("imports");
    let report = wide.finish().await.expect("imports");
    assert_eq!(
        (report.imported, report.already_present),
        (0, 1),
        "{report:?}"
    );
    let report = run("drift", file).await;
    assert_eq!(
        (
            report.events,
            report.imported,
            report.already_present,
            report.refused.len()
        ),
        (3, 1, 2, 0),
        "{report:?}"
    );
    // the imported w2 at yet another time (beyond the live commit's horizon): present for
    // this import re-run and for another import (matched by identity, not time)
    let again = line(
        &customer,
        "w2",
        "llm.tokens",
        minutes(24 * 60 + 3),
        &tokens(100_000),
    );
    for id in ["drift", "drift-2"] {
        let report = run(id, again.clone()).await;
        assert_eq!(
            (
                report.events,
                report.imported,
                report.already_present,
                report.refused.len()
            ),
            (1, 0, 1, 0),
            "{id}: {report:?}"
        );
    }

    // by hand: 333 cents, and w2 imported once more beyond the horizon: 100,000 tokens = 30
    // cents, 363 (the old code imported w1 and w3 again too)
    tally_rater::rate_once(&db, &cat, &rater, import_ms + 1000)
        .await
        .expect("rating after the import");
    assert_eq!(token_charges(&db, &customer).await, 363);

    stop.cancel();
    aggregator
        .await
        .expect("aggregator task")
        .expect("aggregator stops cleanly");
    env.cleanup().await;
}
