//! The usage a customer sees in the portal: committed usage (`v_usage`) of the current
//! billing period, per agent and meter, and per meter and day for the chart. Quantities are
//! exact decimals; a meter's windows combine by its aggregation (SUM and COUNT add up, MAX
//! and MIN take the extreme; other aggregations show the largest window's value).
//! It never reads another customer's rows and never rounds a quantity.

use std::collections::BTreeMap;

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_platform::store::dec9;

/// Usage of one agent on one meter over the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMeter {
    pub agent: String,
    pub meter: String,
    pub quantity: Decimal,
    pub events: u64,
}

/// The portal's usage view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub by_agent_meter: Vec<AgentMeter>,
    /// meter → day start (unix secs) → quantity.
    pub by_meter_day: BTreeMap<String, BTreeMap<i64, Decimal>>,
}

#[derive(clickhouse::Row, Deserialize)]
struct Row {
    day: u32,
    agent: String,
    meter: String,
    aggregation: String,
    #[serde(with = "dec9")]
    s: Decimal,
    #[serde(with = "dec9")]
    mx: Decimal,
    #[serde(with = "dec9")]
    mn: Decimal,
    n: u64,
}

fn combine(aggregation: &str, a: Decimal, b: Decimal) -> Decimal {
    match aggregation {
        "SUM" | "COUNT" => a + b,
        "MIN" => a.min(b),
        _ => a.max(b),
    }
}

fn pick(aggregation: &str, r: &Row) -> Decimal {
    match aggregation {
        "SUM" | "COUNT" => r.s,
        "MIN" => r.mn,
        _ => r.mx,
    }
}

/// Usage of `customer` in `[from_ms, to_ms)`.
pub async fn load(
    db: &Client,
    customer: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Usage, clickhouse::error::Error> {
    let rows: Vec<Row> = db
        .query(
            "SELECT toUInt32(toStartOfDay(window_start)) AS day, agent, meter, aggregation, \
             sum(quantity) AS s, max(quantity) AS mx, min(quantity) AS mn, sum(event_count) AS n \
             FROM v_usage WHERE customer = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?) \
             GROUP BY day, agent, meter, aggregation ORDER BY day, agent, meter",
        )
        .bind(customer)
        .bind(from_ms.div_euclid(1000))
        .bind(to_ms.div_euclid(1000))
        .fetch_all()
        .await?;
    let mut per: BTreeMap<(String, String), (String, Decimal, u64)> = BTreeMap::new();
    let mut days: BTreeMap<String, BTreeMap<i64, Decimal>> = BTreeMap::new();
    for r in &rows {
        let q = pick(&r.aggregation, r);
        per.entry((r.agent.clone(), r.meter.clone()))
            .and_modify(|(agg, total, n)| {
                *total = combine(agg, *total, q);
                *n += r.n;
            })
            .or_insert((r.aggregation.clone(), q, r.n));
        days.entry(r.meter.clone())
            .or_default()
            .entry(i64::from(r.day))
            .and_modify(|v| *v = combine(&r.aggregation, *v, q))
            .or_insert(q);
    }
    Ok(Usage {
        by_agent_meter: per
            .into_iter()
            .map(|((agent, meter), (_, quantity, events))| AgentMeter {
                agent,
                meter,
                quantity: quantity.normalize(),
                events,
            })
            .collect(),
        by_meter_day: days,
    })
}
