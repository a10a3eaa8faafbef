//! The invoicer over the local stack: `customers` customers with `meters` charges each (with
//! a discount and 19 % tax) for one billing period that ended past its grace, inserted
//! straight into `charges`, then one invoicing pass timed end to end: reading the charges,
//! building every invoice, numbering each in NATS KV (compare-and-set counter, create-only
//! number keys), freezing each finalized document in KV, writing invoices and lines to
//! ClickHouse and appending the finalization transitions. The pass streams
//! (`tally_invoicer::invoice_pass_each`); its same-run baseline is the pass's own charge
//! cursor alone, reading the same rows in the same batches.

use std::time::Instant;

use tally_invoicer::numbering::Numbers;
use tally_invoicer::run::{BATCH_CHARGES, BATCH_CUSTOMERS};
use tally_invoicer::{store, InvoicerConfig, PassReport};
use tally_platform::testkit::TestEnv;

/// Seconds one finalizing pass takes, and the invoices it wrote.
pub async fn run(env: &TestEnv, customers: usize, meters: usize) -> anyhow::Result<(f64, usize)> {
    let m = measure(env, customers, meters).await?;
    Ok((m.secs, m.report.invoices))
}

/// One finalizing pass measured.
pub struct Measured {
    /// Seconds of the whole pass.
    pub secs: f64,
    /// Where the pass's time went, and what it wrote.
    pub report: PassReport,
    /// Seconds the same charges take through the pass's cursor alone (the baseline).
    pub read_back_secs: f64,
}

/// Inserts the charges, runs one finalizing pass, then reads the charges back through the
/// pass's cursor alone.
pub async fn measure(env: &TestEnv, customers: usize, meters: usize) -> anyhow::Result<Measured> {
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
    let report = tally_invoicer::invoice_pass_each(
        &db,
        Some(&numbers),
        &InvoicerConfig::default(),
        now * 1000,
        |_| std::ops::ControlFlow::Continue(()),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.finalized == customers,
        "{} of {customers} invoices finalized",
        report.finalized
    );
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(&bucket)
        .await;
    let read = Instant::now();
    let mut batches = store::ChargeBatches::open(
        &db,
        &tally_platform::usage::Reach::default(),
        BATCH_CUSTOMERS,
        BATCH_CHARGES,
    )?;
    let mut charges = 0;
    while let Some(batch) = batches.next_batch().await? {
        charges += batch.len();
    }
    let read_back_secs = read.elapsed().as_secs_f64();
    anyhow::ensure!(
        charges == rows,
        "read back {charges} charges, inserted {rows}"
    );
    Ok(Measured {
        secs,
        report,
        read_back_secs,
    })
}
