//! Finalization over the real servers: invoice numbers from NATS KV are gapless and given
//! once, two invoicer instances racing produce one invoice per (customer, period), a rerun
//! changes nothing, and late usage after finalization becomes an adjustment on the next
//! invoice (or a credit note when it lowers the amount) while the finalized invoice stays.

use std::collections::{BTreeSet, HashMap};

use tally_invoicer::numbering::Numbers;
use tally_invoicer::{invoice_pass, InvoicerConfig};
use tally_platform::testkit::TestEnv;

const DAY: i64 = 86_400;

struct Kv {
    numbers: Numbers,
    bucket: String,
    url: String,
}

async fn numbers(env: &TestEnv) -> Kv {
    let bucket = format!("N{}", env.nats.stream);
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    Kv {
        numbers: Numbers::open(client, &bucket).await.expect("bucket"),
        bucket,
        url: env.nats.url.clone(),
    }
}

impl Kv {
    async fn another(&self) -> Numbers {
        let client = async_nats::connect(&self.url).await.expect("nats");
        Numbers::open(client, &self.bucket).await.expect("bucket")
    }

    async fn delete(self) {
        if let Ok(client) = async_nats::connect(&self.url).await {
            let _ = async_nats::jetstream::new(client)
                .delete_key_value(&self.bucket)
                .await;
        }
    }
}

/// Charges straight into `charges`: `(charge_id, customer, start, end, meter, amount, version)`.
async fn charges(db: &clickhouse::Client, rows: &[(&str, &str, i64, i64, &str, i64, u64)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(id, customer, start, end, meter, amount, version)| {
            format!(
                "('{id}', '{customer}', toDateTime({start}), toDateTime({end}), '{meter}', '{{}}', 'p', 1, 'per_unit', 'USD', \
                 toDecimal128({amount}, 9), '0.01', '[]', {amount}, {amount}, '', 0, 1, toDateTime({start}), toDateTime({start}), now(), {version})"
            )
        })
        .collect();
    db.query(&format!(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, group_key, plan_id, plan_version, \
         price_model, currency, quantity, unit_price, tiers, amount_minor, amount_before_discounts_minor, tax_rate, tax_minor, \
         windows, usage_from, usage_to, computed_at, version) VALUES {}",
        values.join(", ")
    ))
    .execute()
    .await
    .expect("insert charges");
}

fn cfg() -> InvoicerConfig {
    InvoicerConfig {
        grace_secs: DAY as u64,
        ..InvoicerConfig::default()
    }
}

#[tokio::test]
async fn racing_numbering_gives_each_invoice_one_number_without_gaps() {
    let env = TestEnv::new("numbering_race").await;
    let kv = numbers(&env).await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let n = kv.another().await;
        // overlapping sets: every id is asked for by two tasks
        let ids: Vec<String> = (0..60)
            .filter(|i| i % 4 == t || (i + 1) % 4 == t)
            .map(|i| format!("inv_{i:03}"))
            .collect();
        tasks.push(tokio::spawn(async move { n.assign("acme-eu", &ids).await }));
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        for (id, n) in t.await.expect("task").expect("assign") {
            if let Some(prev) = seen.insert(id.clone(), n) {
                assert_eq!(prev, n, "{id} got two numbers");
            }
        }
    }
    assert_eq!(seen.len(), 60);
    let numbers: BTreeSet<u64> = seen.values().copied().collect();
    assert_eq!(numbers, (1..=60).collect(), "gapless, each number once");
    // a later request for a known id returns its number; a new one gets the next
    let again = kv
        .numbers
        .assign("acme-eu", &["inv_007".into(), "inv_new".into()])
        .await
        .expect("assign");
    assert_eq!(again["inv_007"], seen["inv_007"]);
    assert_eq!(again["inv_new"], 61);
    let other_issuer = kv
        .numbers
        .assign("globex", &["inv_x".into()])
        .await
        .expect("assign");
    assert_eq!(other_issuer["inv_x"], 1, "numbers are per issuer");
    kv.delete().await;
    env.cleanup().await;
}

#[tokio::test]
async fn two_invoicers_racing_finalize_each_period_once() {
    let env = TestEnv::new("finalize_race").await;
    let db = env.db();
    let kv = numbers(&env).await;
    let now = chrono::Utc::now().timestamp();
    let (start, end) = (now - 32 * DAY, now - 2 * DAY);
    let customers: Vec<String> = (0..25).map(|i| format!("cust-{i:02}")).collect();
    let rows: Vec<(String, String)> = customers
        .iter()
        .flat_map(|c| [(format!("{c}-a"), c.clone()), (format!("{c}-b"), c.clone())])
        .collect();
    let refs: Vec<(&str, &str, i64, i64, &str, i64, u64)> = rows
        .iter()
        .enumerate()
        .map(|(i, (id, c))| (id.as_str(), c.as_str(), start, end, "m", 100 + i as i64, 1))
        .collect();
    charges(&db, &refs).await;
    let cfg = cfg();
    let second = kv.another().await;
    let (a, b) = tokio::join!(
        invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000),
        invoice_pass(&db, Some(&second), &cfg, now * 1000 + 7),
    );
    let (a, b) = (a.expect("instance a"), b.expect("instance b"));
    assert!(a.len() + b.len() >= 25);
    // both return the same frozen documents for what they both finalized
    for inv in &a {
        if let Some(other) = b.iter().find(|x| x.invoice_id == inv.invoice_id) {
            assert_eq!(other, inv, "racing finalizers agree on one document");
        }
    }
    #[derive(serde::Deserialize, clickhouse::Row)]
    struct Row {
        invoice_id: String,
        customer: String,
        status: String,
        number: String,
        total_minor: i64,
    }
    let stored: Vec<Row> = db
        .query("SELECT invoice_id, customer, status, number, total_minor FROM v_invoices ORDER BY number")
        .fetch_all()
        .await
        .expect("read");
    assert_eq!(stored.len(), 25, "one invoice per customer and period");
    let numbers: Vec<String> = stored.iter().map(|r| r.number.clone()).collect();
    let want: Vec<String> = (1..=25).map(|n| format!("INV-{n:06}")).collect();
    assert_eq!(numbers, want, "gapless numbers, each once");
    for r in &stored {
        assert_eq!(r.status, "finalized");
        let i: i64 = r.customer[5..].parse().expect("index");
        assert_eq!(
            r.total_minor,
            (100 + 2 * i) + (101 + 2 * i),
            "{}",
            r.invoice_id
        );
    }
    let transitions: u64 = db
        .query("SELECT count() FROM v_invoice_transitions WHERE to_status = 'finalized'")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(transitions, 25);
    // a lagging instance (its clock behind) writing a draft of a finalized invoice later
    // never hides the finalized rows
    let mut stale = a.first().or(b.first()).expect("an invoice").clone();
    stale.status = tally_invoicer::Status::Draft;
    stale.number = None;
    stale.issued_at_ms += 3_600_000;
    tally_invoicer::store::write(&db, std::slice::from_ref(&stale))
        .await
        .expect("write");
    let (status, number): (String, String) = db
        .query("SELECT status, number FROM v_invoices WHERE invoice_id = ?")
        .bind(&stale.invoice_id)
        .fetch_one()
        .await
        .expect("read");
    assert_eq!(status, "finalized");
    assert!(number.starts_with("INV-"));
    // a rerun, later, finds nothing to do and changes nothing
    let rerun = invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000 + 60_000)
        .await
        .expect("rerun");
    assert!(rerun.is_empty(), "{} invoices rewritten", rerun.len());
    kv.delete().await;
    env.cleanup().await;
}

#[tokio::test]
async fn late_usage_after_finalization_becomes_adjustment_or_credit_note() {
    let env = TestEnv::new("late_usage").await;
    let db = env.db();
    let kv = numbers(&env).await;
    let now = chrono::Utc::now().timestamp();
    let (p0, p1, p2) = (now - 32 * DAY, now - 2 * DAY, now + 28 * DAY);
    charges(
        &db,
        &[
            ("up-old", "acme", p0, p1, "tokens", 1_000, 1),
            ("down-old", "acme", p0, p1, "calls", 500, 1),
        ],
    )
    .await;
    let cfg = cfg();
    let first = invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000)
        .await
        .expect("pass");
    assert_eq!(first.len(), 1);
    let finalized = first[0].clone();
    assert_eq!(finalized.total_minor, 1_500);
    assert_eq!(finalized.number.as_deref(), Some("INV-000001"));
    // late events: the rater recomputes the finalized period (higher versions), and the
    // current period has usage too
    charges(
        &db,
        &[
            ("up-old", "acme", p0, p1, "tokens", 1_250, 2),
            ("down-old", "acme", p0, p1, "calls", 450, 2),
            ("cur", "acme", p1, p2, "tokens", 300, 1),
        ],
    )
    .await;
    let before = tally_invoicer::reconcile::run(&db, (now - 60 * DAY) * 1000)
        .await
        .expect("reconcile");
    assert_eq!(
        before.difference_minor, 200,
        "late usage not yet on any invoice: +250 - 50"
    );
    let second = invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000 + 1_000)
        .await
        .expect("pass");
    assert_eq!(second.len(), 1, "only the open period's draft");
    let draft = &second[0];
    let adj: Vec<_> = draft
        .lines
        .iter()
        .filter(|l| l.kind == tally_invoicer::invoice::LineKind::Adjustment)
        .collect();
    assert_eq!(adj.len(), 1);
    assert_eq!(adj[0].amount_minor, 250, "adjustment equals the late usage");
    assert_eq!(adj[0].charge_id, "up-old");
    assert_eq!(
        adj[0].adjusts_invoice_id.as_deref(),
        Some(finalized.invoice_id.as_str())
    );
    assert_eq!(draft.total_minor, 300 + 250);
    #[derive(serde::Deserialize, clickhouse::Row)]
    struct Note {
        invoice_id: String,
        charge_id: String,
        amount_minor: i64,
    }
    let notes: Vec<Note> = db
        .query("SELECT invoice_id, charge_id, amount_minor FROM v_credit_notes")
        .fetch_all()
        .await
        .expect("notes");
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (
            notes[0].invoice_id.as_str(),
            notes[0].charge_id.as_str(),
            notes[0].amount_minor
        ),
        (finalized.invoice_id.as_str(), "down-old", 50)
    );
    // the finalized invoice never changed
    let doc: String = db
        .query("SELECT document FROM v_invoices WHERE invoice_id = ?")
        .bind(&finalized.invoice_id)
        .fetch_one()
        .await
        .expect("doc");
    let stored: tally_invoicer::Invoice = serde_json::from_str(&doc).expect("json");
    assert_eq!(stored, finalized);
    let after = tally_invoicer::reconcile::run(&db, (now - 60 * DAY) * 1000)
        .await
        .expect("reconcile");
    assert_eq!(after.difference_minor, 0, "{after:#?}");
    let covered = after
        .money_differences
        .iter()
        .find(|d| d.invoice_id == finalized.invoice_id)
        .expect("the corrected invoice is reported");
    assert_eq!((covered.pending_minor, covered.credited_minor), (250, 50));
    // passing again issues nothing twice
    let third = invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000 + 2_000)
        .await
        .expect("pass");
    assert_eq!(third[0].total_minor, 550);
    let count: u64 = db
        .query("SELECT count() FROM v_credit_notes")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(count, 1);
    kv.delete().await;
    env.cleanup().await;
}

#[tokio::test]
async fn with_late_usage_adjustments_off_late_usage_is_only_reported() {
    let env = TestEnv::new("late_usage_off").await;
    let db = env.db();
    let kv = numbers(&env).await;
    let now = chrono::Utc::now().timestamp();
    let (p0, p1, p2) = (now - 32 * DAY, now - 2 * DAY, now + 28 * DAY);
    charges(&db, &[("up-old", "acme", p0, p1, "tokens", 1_000, 1)]).await;
    let mut cfg = cfg();
    cfg.features.late_usage_adjustments = false;
    let first = invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000)
        .await
        .expect("pass");
    assert_eq!(first.len(), 1);
    charges(
        &db,
        &[
            ("up-old", "acme", p0, p1, "tokens", 1_250, 2),
            ("cur", "acme", p1, p2, "tokens", 300, 1),
        ],
    )
    .await;
    let second = invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000 + 1_000)
        .await
        .expect("pass");
    assert_eq!(second.len(), 1);
    assert!(
        second[0]
            .lines
            .iter()
            .all(|l| l.kind != tally_invoicer::invoice::LineKind::Adjustment),
        "no adjustment line with the feature off"
    );
    assert_eq!(second[0].total_minor, 300);
    let notes: u64 = db
        .query("SELECT count() FROM v_credit_notes")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(notes, 0);
    let r = tally_invoicer::reconcile::run(&db, (now - 60 * DAY) * 1000)
        .await
        .expect("reconcile");
    assert_eq!(r.difference_minor, 250, "the late usage is still reported");
    kv.delete().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_schedule_runs_passes_until_shutdown() {
    let env = TestEnv::new("schedule_loop").await;
    let db = env.db();
    let kv = numbers(&env).await;
    let now = chrono::Utc::now().timestamp();
    charges(
        &db,
        &[("s-1", "acme", now - 32 * DAY, now - 2 * DAY, "m", 700, 1)],
    )
    .await;
    let cfg = InvoicerConfig {
        schedule: tally_invoicer::schedule::Schedule::parse("* * * * * *").expect("every second"),
        ..cfg()
    };
    let stop = tally_platform::shutdown::Shutdown::new();
    let task = tokio::spawn(tally_invoicer::run::run(
        db.clone(),
        kv.another().await,
        cfg,
        stop.clone(),
        || chrono::Utc::now().timestamp_millis(),
    ));
    let mut numbered = String::new();
    for _ in 0..150 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        numbered = db
            .query("SELECT any(number) FROM v_invoices WHERE customer = 'acme'")
            .fetch_one()
            .await
            .expect("read");
        if !numbered.is_empty() {
            break;
        }
    }
    assert_eq!(
        numbered, "INV-000001",
        "a scheduled pass finalized the invoice"
    );
    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("the loop stops on shutdown")
        .expect("task");
    kv.delete().await;
    env.cleanup().await;
}

#[tokio::test]
async fn prepaid_credits_lower_the_amount_due_once() {
    let env = TestEnv::new("prepaid_credits").await;
    let db = env.db();
    let kv = numbers(&env).await;
    let now = chrono::Utc::now().timestamp();
    let (p0, p1, p2) = (now - 62 * DAY, now - 32 * DAY, now - 2 * DAY);
    tally_invoicer::store::grant_credit(&db, "g-1", "acme", "USD", 1_000, "prepaid", now * 1000)
        .await
        .expect("grant");
    charges(
        &db,
        &[
            ("c-1", "acme", p0, p1, "m", 700, 1),
            ("c-2", "acme", p1, p2, "m", 500, 1),
        ],
    )
    .await;
    let cfg = InvoicerConfig {
        lookback_secs: 70 * DAY as u64,
        ..cfg()
    };
    let pass = invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000)
        .await
        .expect("pass");
    let due: Vec<(i64, i64, i64)> = pass
        .iter()
        .map(|i| (i.total_minor, i.credits_applied_minor, i.amount_due_minor))
        .collect();
    assert_eq!(due, vec![(700, 700, 0), (500, 300, 200)]);
    // a new period later finds the credit used up
    charges(&db, &[("c-3", "acme", p2, now + 28 * DAY, "m", 100, 1)]).await;
    let later = invoice_pass(&db, Some(&kv.numbers), &cfg, now * 1000 + 1_000)
        .await
        .expect("pass");
    assert_eq!(later.len(), 1);
    assert_eq!(
        (later[0].credits_applied_minor, later[0].amount_due_minor),
        (0, 100)
    );
    kv.delete().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_crash_after_numbering_is_completed_by_the_next_pass_with_the_same_number() {
    let env = TestEnv::new("crash_numbering").await;
    let db = env.db();
    let kv = numbers(&env).await;
    let now = chrono::Utc::now().timestamp();
    let (start, end) = (now - 32 * DAY, now - 2 * DAY);
    charges(
        &db,
        &[
            ("x-1", "acme", start, end, "m", 100, 1),
            ("x-2", "globex", start, end, "m", 200, 1),
        ],
    )
    .await;
    // an earlier run numbered globex's invoice and died before writing anything else
    let globex = tally_invoicer::invoice::invoice_id("globex", start * 1000);
    let taken = kv
        .numbers
        .assign("tally", std::slice::from_ref(&globex))
        .await
        .expect("assign");
    assert_eq!(taken[&globex], 1);
    let pass = invoice_pass(&db, Some(&kv.numbers), &cfg(), now * 1000)
        .await
        .expect("pass");
    let numbers: Vec<(String, Option<String>)> = pass
        .iter()
        .map(|i| (i.customer.to_string(), i.number.clone()))
        .collect();
    assert_eq!(
        numbers,
        vec![
            ("acme".into(), Some("INV-000002".into())),
            ("globex".into(), Some("INV-000001".into()))
        ],
        "the number given before the crash is reused; the next one follows without a gap"
    );
    kv.delete().await;
    env.cleanup().await;
}
