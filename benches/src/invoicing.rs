//! The invoicer over the local stack: `customers` customers with `meters` charges each (with
//! a discount and 19 % tax) for one billing period that ended past its grace, inserted
//! straight into `charges`, then one invoicing pass timed end to end: reading the charges,
//! building every invoice, numbering each in NATS KV (compare-and-set counter, create-only
//! number keys), freezing each finalized document in KV, writing invoices and lines to
//! ClickHouse and appending the finalization transitions.

use std::time::Instant;

use tally_invoicer::numbering::Numbers;
use tally_invoicer::InvoicerConfig;
use tally_platform::testkit::TestEnv;

/// Seconds one finalizing pass takes, and the invoices it wrote.
pub async fn run(env: &TestEnv, customers: usize, meters: usize) -> anyhow::Result<(f64, usize)> {
    let db = env.db();
    let now = chrono::Utc::now().timestamp();
    let (start, end) = (now - 32 * 86_400, now - 2 * 86_400); // ended, past the 1-day grace
    let rows = customers * meters;
    db.query(&format!(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, group_key, plan_id, plan_version, \
         price_model, currency, quantity, unit_price, tiers, amount_minor, amount_before_discounts_minor, tax_rate, tax_minor, \
         windows, usage_from, usage_to, computed_at, version) \
         SELECT concat('chg_', toString(number)), concat('customer-', toString(intDiv(number, {meters}))), \
                toDateTime({start}), toDateTime({end}), concat('meter_', toString(number % {meters})), '{{}}', 'bench', 1, \
                'per_unit', 'USD', toDecimal128(number % 100000, 9), '0.001', '[]', toInt64(number % 100000), \
                toInt64(number % 100000 + 10), '19', toInt64(intDiv((number % 100000) * 19, 100)), 1, \
                toDateTime({start}), toDateTime({end}), now(), 1 \
         FROM numbers({rows})"
    ))
    .execute()
    .await?;
    let bucket = format!("N{}", env.nats.stream);
    let client = async_nats::connect(&env.nats.url).await?;
    let numbers = Numbers::open(client.clone(), &bucket).await?;
    let started = Instant::now();
    let invoices =
        tally_invoicer::invoice_pass(&db, Some(&numbers), &InvoicerConfig::default(), now * 1000)
            .await?;
    let secs = started.elapsed().as_secs_f64();
    let finalized = invoices.iter().filter(|i| i.number.is_some()).count();
    anyhow::ensure!(
        finalized == customers,
        "{finalized} of {customers} invoices finalized"
    );
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(&bucket)
        .await;
    Ok((secs, invoices.len()))
}
