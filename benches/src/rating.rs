//! Rating throughput: committed usage rows folded per (customer, period, meter, group) and
//! priced into charges, in process, one thread. The catalog is the AI-agent shape: a price
//! book per model and token kind for tokens (one charge per group) and graduated tiers with a
//! free allowance and a minimum for tool calls (one charge per meter). Every customer has a
//! subscription taxed at 19% with a 10% coupon for ever, and each charge is priced with its
//! terms as a rating pass does (`rate_once`). No ClickHouse: this measures the rater's own CPU
//! cost per usage row, what a pass adds on top of reading `v_usage` and inserting charges.

use rust_decimal::Decimal;
use tally_domain::meter::{validate_meters, MeterSpec};
use tally_platform::store::dec9;
use tally_platform::usage::Units;
use tally_rater::catalog::tax::{TaxRateSpec, TaxTable};
use tally_rater::config::{PlanSpec, SubscriptionSpec};
use tally_rater::rating::charge::compute_with;
use tally_rater::rating::usage::{fold, UsageRow};
use tally_rater::{Catalog, RaterConfig};

use crate::cputime::timed;

/// What one run measured.
pub struct RatingFigures {
    pub rows: usize,
    pub charges: usize,
    pub rows_per_sec: f64,
}

const MODELS: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku"];
const KINDS: [&str; 2] = ["input", "output"];

fn catalog(customers: usize) -> anyhow::Result<Catalog> {
    let meters: Vec<MeterSpec> = serde_json::from_str(
        r#"[{"slug":"llm_tokens","event_type":"llm.tokens","aggregation":"SUM","value_property":"$.tokens",
             "group_by":{"model":"$.model","kind":"$.kind"}},
            {"slug":"tool_calls","event_type":"tool.call","aggregation":"COUNT","group_by":{"tool":"$.tool"}}]"#,
    )?;
    let plans: Vec<PlanSpec> = serde_json::from_str(
        r#"[{"id":"ai","version":1,"currency":"USD","effective_from":"2020-01-01T00:00:00Z","prices":[
            {"model":"dimensional","meter":"llm_tokens","dimensions":["model","kind"],"default_unit_price":"0.000001",
             "rates":[{"values":["gpt-4o","input"],"unit_price":"0.0000025"},{"values":["gpt-4o","output"],"unit_price":"0.00001"},
                      {"values":["gpt-4o-mini","input"],"unit_price":"0.00000015"},{"values":["gpt-4o-mini","output"],"unit_price":"0.0000006"},
                      {"values":["claude-sonnet","input"],"unit_price":"0.000003"},{"values":["claude-sonnet","output"],"unit_price":"0.000015"}]},
            {"model":"graduated","meter":"tool_calls","free_units":"100","minimum":"5",
             "tiers":[{"up_to":"1000","unit_price":"0.02"},{"up_to":"10000","unit_price":"0.015"},{"unit_price":"0.01"}]}]}]"#,
    )?;
    let meters = validate_meters(meters)?;
    let rater = RaterConfig {
        default_plan: Some("ai".into()),
        ..Default::default()
    };
    let subs = (0..customers)
        .map(|i| {
            serde_json::from_value::<SubscriptionSpec>(serde_json::json!({
                "customer": format!("customer-{i}"), "plan": "ai", "tax_region": "DE",
                "coupons": [{"id": "TEN", "percent_off": "10", "starts": "2020-01-01T00:00:00Z",
                             "duration": "forever"}]
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let taxes: Vec<TaxRateSpec> = serde_json::from_str(
        r#"[{"region":"DE","rate_percent":"19","effective_from":"2020-01-01T00:00:00Z"}]"#,
    )?;
    Ok(Catalog::new(plans, subs, &rater, &meters)?.with_taxes(TaxTable::new(taxes)?)?)
}

/// `rows` usage rows: `customers` customers, windows of one minute from 2026-11-01, each
/// row one (customer, agent, meter, group) window.
fn usage_rows(rows: usize, customers: usize) -> Vec<UsageRow> {
    let start = 1_793_491_200u32; // 2026-11-01T00:00:00Z
    (0..rows)
        .map(|i| {
            let customer = format!("customer-{}", i % customers);
            let j = i / customers; // the customer's j-th row
            let minute = (j / 10) as u32 % 40_000;
            let window_start = start + minute * 60;
            let (meter, aggregation, names, values) = if j % 5 == 4 {
                let tool = format!("tool-{}", j % 7);
                ("tool_calls", "COUNT", vec!["tool".to_owned()], vec![tool])
            } else {
                let (m, k) = (MODELS[j % 4], KINDS[(j / 4) % 2]);
                let names = vec!["kind".to_owned(), "model".to_owned()];
                ("llm_tokens", "SUM", names, vec![k.to_owned(), m.to_owned()])
            };
            let group_key = format!(
                "{{{}}}",
                names
                    .iter()
                    .zip(&values)
                    .map(|(n, v)| format!("\"{n}\":\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let quantity = Decimal::new((i as i64 % 5000) * 7 + 1, if i % 3 == 0 { 0 } else { 2 });
            let units = Units(dec9::to_units(quantity).unwrap_or_default());
            UsageRow {
                customer,
                agent: String::new(),
                meter: meter.into(),
                aggregation: aggregation.into(),
                group_key,
                group_names: names,
                group_values: values,
                start: window_start,
                end: window_start + 60,
                events: 1,
                sum: units,
                min: units,
                max: units,
                latest: units,
                latest_time_ms: i64::from(window_start) * 1000,
                latest_event_id: String::new(),
                unique_values: vec![],
            }
        })
        .collect()
}

/// Baseline: summing the quantities (`Decimal`) of the same usage rows, in rows per second
/// on one thread; the least any per-row rating can cost.
pub fn baseline(rows: usize, customers: usize) -> f64 {
    let input = usage_rows(rows, customers.max(1));
    let (total, t) = timed(|| {
        input
            .iter()
            .filter_map(|r| r.sum.decimal())
            .sum::<Decimal>()
    });
    std::hint::black_box(total);
    t.per_core(rows)
}

/// Folds and prices `rows` usage rows of `customers` customers, timing only the rating (per
/// second of this thread's CPU time).
pub fn run(rows: usize, customers: usize) -> anyhow::Result<RatingFigures> {
    let mut passes = run_passes(rows, customers, 1)?;
    passes
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no rating pass ran"))
}

/// [`run`] `passes` times over one set of usage rows (at least once), each pass folding and
/// pricing from nothing as a rating pass does: the figures of each pass. Building the rows
/// (each row owns about ten strings and vectors) costs more than rating them and is never
/// timed; repeating the passes keeps it out of a profile of the whole process too (issue 21:
/// its page faults were a third of the samples of one pass).
pub fn run_passes(
    rows: usize,
    customers: usize,
    passes: usize,
) -> anyhow::Result<Vec<RatingFigures>> {
    let catalog = catalog(customers.max(1))?;
    let input = usage_rows(rows, customers.max(1));
    (0..passes.max(1))
        .map(|_| {
            let (priced, t) = timed(|| price(&input, &catalog));
            let (charges, total_minor) = priced?;
            std::hint::black_box(total_minor);
            Ok(RatingFigures {
                rows,
                charges,
                rows_per_sec: t.per_core(rows),
            })
        })
        .collect()
}

/// Folds and prices `input`: (charges, their total in minor units).
fn price(input: &[UsageRow], catalog: &Catalog) -> anyhow::Result<(usize, i64)> {
    let usages = fold(input, catalog).usages;
    let mut charges = 0usize;
    let mut total_minor = 0i64;
    for u in usages.values() {
        let Some(sub) = catalog.subscription_at(&u.customer, u.segment_from_ms) else {
            continue;
        };
        let Some(plan) = catalog.plan_at(&sub.plan, u.segment_from_ms) else {
            continue;
        };
        let terms = catalog.terms(&sub, plan, &u.period, &u.meter);
        if let Some(c) = compute_with(u, plan, &terms)? {
            charges += 1;
            total_minor = total_minor.saturating_add(c.amount_with_tax_minor);
        }
    }
    Ok((charges, total_minor))
}
