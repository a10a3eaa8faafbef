//! One customer's invoice that cannot be finalized never stops the others, over the real
//! servers: a document too large for a NATS KV value (a customer with thousands of charges)
//! fails alone, counted and retried every pass, while the other customers' invoices of the
//! same pass are numbered, frozen, written and recorded as finalized.

use tally_invoicer::numbering::Numbers;
use tally_invoicer::{invoice_pass, InvoicerConfig, Status};
use tally_platform::testkit::TestEnv;

const DAY: i64 = 86_400;
const NOV_1: i64 = 1_793_491_200;
const DEC_1: i64 = 1_796_083_200;

async fn charges(db: &clickhouse::Client, customer: &str, n: usize, amount: i64) {
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "('chg_{customer}_{i:05}', '{customer}', toDateTime({NOV_1}), toDateTime({DEC_1}), 'm{i:05}', '{{}}', 'p', 1, \
                 'per_unit', 'USD', toDecimal128(1, 9), '0.01', '[]', {amount}, {amount}, '', 0, 1, \
                 toDateTime({NOV_1}), toDateTime({NOV_1}), now(), 1)"
            )
        })
        .collect();
    db.query(&format!(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, group_key, plan_id, plan_version, \
         price_model, currency, quantity, unit_price, tiers, amount_minor, amount_before_discounts_minor, tax_rate, \
         tax_minor, windows, usage_from, usage_to, computed_at, version) VALUES {}",
        values.join(", ")
    ))
    .execute()
    .await
    .expect("insert charges");
}

#[tokio::test]
async fn an_invoice_that_cannot_be_frozen_fails_alone_and_is_retried() {
    let env = TestEnv::new("invoicer_isolation").await;
    let db = env.db();
    let bucket = format!("N{}", env.nats.stream);
    let client = async_nats::connect(&env.nats.url).await.expect("nats");
    let max_payload = client.server_info().max_payload;
    let numbers = Numbers::open(client, &bucket).await.expect("bucket");
    // ~300 bytes of JSON per line: enough lines to pass the server's largest message
    let lines = max_payload / 250 + 100;
    charges(&db, "huge", lines, 1).await;
    charges(&db, "acme", 2, 150).await;
    charges(&db, "globex", 1, 999).await;
    let cfg = InvoicerConfig {
        grace_secs: DAY as u64,
        ..InvoicerConfig::default()
    };
    let now = (DEC_1 + 2 * DAY) * 1000;
    let pass = invoice_pass(&db, Some(&numbers), &cfg, now)
        .await
        .expect("the pass goes on without the huge invoice");
    let got: Vec<(&str, Status, i64)> = pass
        .iter()
        .map(|i| (i.customer.as_str(), i.status, i.total_minor))
        .collect();
    assert_eq!(
        got,
        vec![
            ("acme", Status::Finalized, 300),
            ("globex", Status::Finalized, 999)
        ]
    );
    let acme = tally_invoicer::invoice::invoice_id("acme", NOV_1 * 1000);
    let globex = tally_invoicer::invoice::invoice_id("globex", NOV_1 * 1000);
    let mut finalized: Vec<String> = db
        .query("SELECT invoice_id FROM v_invoice_transitions WHERE to_status = 'finalized'")
        .fetch_all()
        .await
        .expect("transitions");
    finalized.sort();
    let mut want = vec![acme.clone(), globex.clone()];
    want.sort();
    assert_eq!(finalized, want);
    let huge: u64 = db
        .query("SELECT count() FROM v_invoices WHERE customer = 'huge'")
        .fetch_one()
        .await
        .expect("count");
    assert_eq!(huge, 0, "nothing half-finalized is written");
    // the next pass tries again, fails alone again, and leaves the finalized ones as they are
    let again = invoice_pass(&db, Some(&numbers), &cfg, now + 60_000)
        .await
        .expect("retried");
    assert!(
        again.is_empty(),
        "{:?}",
        again.iter().map(|i| &i.customer).collect::<Vec<_>>()
    );
    // the huge invoice holds its number: it is the same on every try (numbers are never
    // given twice)
    let id = tally_invoicer::invoice::invoice_id("huge", NOV_1 * 1000);
    let first = numbers
        .assign(&cfg.issuer.id, std::slice::from_ref(&id))
        .await
        .expect("number");
    let all = numbers
        .assign(&cfg.issuer.id, &[acme, globex, id.clone()])
        .await
        .expect("numbers");
    assert_eq!(all[&id], first[&id]);
    let mut given: Vec<u64> = all.values().copied().collect();
    given.sort();
    assert_eq!(given, vec![1, 2, 3]);
    if let Ok(client) = async_nats::connect(&env.nats.url).await {
        let _ = async_nats::jetstream::new(client)
            .delete_key_value(&bucket)
            .await;
    }
    env.cleanup().await;
}
