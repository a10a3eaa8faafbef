//! A pass at a scale the first invoicer could not reach, over the real servers: 5,000
//! customers with 64-character ids (the longest a customer id may be) and two charges each,
//! generated in ClickHouse. The pass reads the charges with one cursor and invoices them in
//! batches of whole customers, so it holds one batch at a time (at most `BATCH_CUSTOMERS`
//! invoices handed out per batch), and every id list it sends stays under ClickHouse's
//! `max_query_size`: before, the one wallet query of the pass named all 5,000 customers
//! (about 340 KB of SQL) and ClickHouse refused it ("Max query size exceeded"), so no invoice
//! at all was built. Exactly once at that scale: 5,000 invoices numbered 1 to 5,000 once
//! each, one finalization transition each, and a second pass writes nothing. A pass stopped
//! between batches (a shutdown) has written the batch in hand and no more; the next pass takes
//! the rest. Prepaid credit grants are read per batch, for its customers: a grant in the first
//! and one in the last batch are each applied once.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use tally_invoicer::numbering::Numbers;
use tally_invoicer::run::BATCH_CUSTOMERS;
use tally_invoicer::{invoice_pass_each, InvoicerConfig, Status};
use tally_platform::testkit::TestEnv;

const DAY: i64 = 86_400;
const NOV_1: i64 = 1_793_491_200;
const DEC_1: i64 = 1_796_083_200;
const CUSTOMERS: usize = 5_000;

#[tokio::test]
async fn five_thousand_long_customer_ids_are_invoiced_in_batches_exactly_once() {
    let env = TestEnv::new("invoicer_scale").await;
    // the server keeps no pass's charges in memory either
    let db = env.db().with_setting("max_memory_usage", "200000000");
    // customer `c<10 digits><53 x>` (64 characters); charge 2n is 100 minor, 2n + 1 is 101
    db.query(&format!(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, group_key, plan_id, \
         plan_version, price_model, currency, quantity, unit_price, tiers, amount_minor, \
         amount_before_discounts_minor, tax_rate, tax_minor, windows, usage_from, usage_to, computed_at, version) \
         SELECT concat('chg_', toString(number)), concat('c', toString(1000000000 + intDiv(number, 2)), '{PAD}'), \
                toDateTime({NOV_1}), toDateTime({DEC_1}), concat('m', toString(number % 2)), '{{}}', 'p', 1, \
                'per_unit', 'USD', toDecimal128(1, 9), '1', '[]', toInt64(100 + number % 2), \
                toInt64(100 + number % 2), '', 0, 1, toDateTime({NOV_1}), toDateTime({NOV_1}), now(), 1 \
         FROM system.numbers LIMIT {}",
        CUSTOMERS * 2,
        PAD = "x".repeat(53)
    ))
    .execute()
    .await
    .expect("insert charges");
    // prepaid credit grants of two customers, one in the first batch and one in the last: each
    // batch reads the grants of its own customers only
    db.query(&format!(
        "INSERT INTO credit_grants (grant_id, customer, currency, amount_minor, reason, \
         granted_at_ms, granted_at) \
         SELECT concat('g', toString(number)), concat('c', toString(1000000000 + number), '{PAD}'), \
                'USD', 50, 'test', 0, toDateTime(0) \
         FROM (SELECT number FROM system.numbers LIMIT 4501) WHERE number IN (3, 4500)",
        PAD = "x".repeat(53)
    ))
    .execute()
    .await
    .expect("insert grants");
    let bucket = format!("N{}", env.nats.stream);
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let numbers = Numbers::open(client, &bucket).await.expect("bucket");
    let cfg = InvoicerConfig {
        grace_secs: DAY as u64,
        ..InvoicerConfig::default()
    };
    let now = (DEC_1 + 2 * DAY) * 1000;
    let mut batch_sizes = Vec::new();
    let mut numbers_given = BTreeSet::new();
    let mut total_minor = 0i64;
    let mut take = |batch: Vec<tally_invoice::Invoice>| {
        batch_sizes.push(batch.len());
        for inv in batch {
            assert_eq!(inv.status, Status::Finalized, "{}", inv.customer);
            assert_eq!(inv.customer.as_str().len(), 64);
            assert!(numbers_given.insert(inv.number.clone().expect("numbered")));
            total_minor += inv.total_minor;
        }
    };
    // a shutdown during the first batch: the pass writes that batch and stops before the next
    let stopped = invoice_pass_each(&db, Some(&numbers), &cfg, now, |batch| {
        take(batch);
        ControlFlow::Break(())
    })
    .await
    .expect("the stopped pass");
    assert_eq!(
        (stopped.stopped, stopped.batches, stopped.finalized),
        (true, 1, 2_000)
    );
    // the next pass takes the rest: the first batch's customers are finalized already
    let report = invoice_pass_each(&db, Some(&numbers), &cfg, now + 500, |batch| {
        take(batch);
        ControlFlow::Continue(())
    })
    .await
    .expect("the pass");
    assert_eq!(batch_sizes, vec![2_000, 0, 2_000, 1_000]);
    assert!(batch_sizes.iter().all(|n| *n <= BATCH_CUSTOMERS));
    assert_eq!(
        (
            report.stopped,
            report.invoices,
            report.finalized,
            report.batches
        ),
        (false, 3_000, 3_000, 3)
    );
    // 100 + 101 minor per customer
    assert_eq!(total_minor, 5_000 * 201);
    let want: BTreeSet<String> = (1..=5_000).map(|n| format!("INV-{n:06}")).collect();
    assert_eq!(numbers_given, want, "gapless, each number once");
    let (stored, distinct_numbers, sum): (u64, u64, i64) = db
        .query(
            "SELECT count(), uniqExact(number), toInt64(sum(total_minor)) FROM v_invoices \
             WHERE status = 'finalized'",
        )
        .fetch_one()
        .await
        .expect("invoices");
    assert_eq!((stored, distinct_numbers, sum), (5_000, 5_000, 5_000 * 201));
    let credited: Vec<(String, i64)> = db
        .query(
            "SELECT substring(customer, 1, 11), credits_applied_minor FROM v_invoices \
             WHERE credits_applied_minor != 0 ORDER BY customer",
        )
        .fetch_all()
        .await
        .expect("credits");
    assert_eq!(
        credited,
        vec![
            ("c1000000003".to_owned(), 50),
            ("c1000004500".to_owned(), 50)
        ],
        "each grant is applied once, in its customer's batch"
    );
    let transitions: u64 = db
        .query("SELECT count() FROM v_invoice_transitions WHERE to_status = 'finalized'")
        .fetch_one()
        .await
        .expect("transitions");
    assert_eq!(transitions, 5_000);
    // a rerun finds every invoice finalized: nothing built, numbered or written
    let again = invoice_pass_each(&db, Some(&numbers), &cfg, now + 1000, |batch| {
        assert!(batch.is_empty(), "{} invoices written again", batch.len());
        ControlFlow::Continue(())
    })
    .await
    .expect("the rerun");
    assert_eq!((again.invoices, again.finalized), (0, 0));
    let rows: u64 = db
        .query("SELECT count() FROM invoices")
        .fetch_one()
        .await
        .expect("invoice rows");
    assert_eq!(rows, 5_000, "no row appended by the rerun");
    let _ = async_nats::jetstream::new(async_nats::connect(&env.nats.url).await.expect("nats"))
        .delete_key_value(&bucket)
        .await;
    env.cleanup().await;
}
