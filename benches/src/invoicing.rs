//! The invoicer over the local stack: `customers` customers with `meters` charges each for
//! one ended billing period, inserted straight into `charges`, then one invoicing pass timed.

use std::time::Instant;

use tally_invoicer::InvoicerConfig;
use tally_platform::testkit::TestEnv;

/// Seconds one `invoice_once` pass takes, and the invoices it wrote.
pub async fn run(env: &TestEnv, customers: usize, meters: usize) -> anyhow::Result<(f64, usize)> {
    let db = env.db();
    let now = chrono::Utc::now().timestamp();
    let (start, end) = (now - 32 * 86_400, now - 2 * 86_400); // ended, past the 1-day grace
    let rows = customers * meters;
    db.query(&format!(
        "INSERT INTO charges (charge_id, customer, period_start, period_end, meter, group_key, plan_id, plan_version, \
         price_model, currency, quantity, unit_price, tiers, amount_minor, windows, usage_from, usage_to, computed_at, version) \
         SELECT concat('chg_', toString(number)), concat('customer-', toString(intDiv(number, {meters}))), \
                toDateTime({start}), toDateTime({end}), concat('meter_', toString(number % {meters})), '{{}}', 'bench', 1, \
                'per_unit', 'USD', toDecimal128(number % 100000, 9), '0.001', '[]', toInt64(number % 100000), 1, \
                toDateTime({start}), toDateTime({end}), now(), 1 \
         FROM numbers({rows})"
    ))
    .execute()
    .await?;
    let started = Instant::now();
    let invoices =
        tally_invoicer::invoice_once(&db, &InvoicerConfig::default(), now * 1000).await?;
    Ok((started.elapsed().as_secs_f64(), invoices.len()))
}
