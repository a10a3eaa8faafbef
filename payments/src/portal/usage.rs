//! The usage a customer sees in the portal: committed usage of the current billing period
//! (`tally_platform::usage`, bounded by the customer and the period), per agent and meter,
//! per meter (and agent) and UTC day for the charts, and per (meter, group, agent, day) cell
//! for the cost per day ([`super::cost`]). Quantities are exact decimals; windows and days
//! combine by the meter's aggregation (`usage::Totals`).
//! It never reads another customer's rows and never rounds a quantity.

use std::collections::BTreeMap;

use clickhouse::Client;
use rust_decimal::Decimal;
use tally_platform::usage::{self, Totals};

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
    /// meter → agent → day start → quantity.
    pub by_meter_agent_day: BTreeMap<String, BTreeMap<String, BTreeMap<i64, Decimal>>>,
    /// meter → its aggregation (`SUM`, `COUNT`, ...).
    pub aggregations: BTreeMap<String, String>,
    /// The finest cells, for dividing a charge over days and agents.
    pub cells: Vec<Cell>,
}

/// The quantity of one (meter, group, agent, UTC day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub meter: String,
    pub group_key: String,
    pub agent: String,
    pub day: i64,
    pub quantity: Decimal,
}

/// Aggregations whose quantities add up over days and agents (the others, MIN, MAX, LATEST,
/// UNIQUE_COUNT, do not: a day's MAX is not a share of the period's).
pub fn additive(aggregation: &str) -> bool {
    matches!(aggregation, "SUM" | "COUNT")
}

/// Usage of `customer` in `[from_ms, to_ms)`: one bounded read (this customer, this range;
/// sealed days from the daily rollups, the rest from the partials), merged exactly per
/// (agent, meter) and per (meter, UTC day). A quantity too large to represent is shown as
/// zero and logged (it never fails the page).
pub async fn load(
    db: &Client,
    customer: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Usage, clickhouse::error::Error> {
    let secs = |ms: i64| u32::try_from(ms.div_euclid(1000)).unwrap_or(0);
    let req = usage::Request {
        from: secs(from_ms),
        to: secs(to_ms),
        scope: usage::Scope::Customer(customer),
        meter: None,
        by_agent: true,
        resolution: usage::Resolution::Days,
        split: &[],
        months_except: None,
        through: None,
    };
    let plan = usage::plan(db, req.from).await?;
    let rows = usage::read(db, &plan, &req).await?;
    let mut per: BTreeMap<(String, String), (String, Totals)> = BTreeMap::new();
    let mut days: BTreeMap<(String, i64), (String, Totals)> = BTreeMap::new();
    let mut agent_days: BTreeMap<(String, String, i64), (String, Totals)> = BTreeMap::new();
    let mut cells: BTreeMap<(String, String, String, i64), (String, Totals)> = BTreeMap::new();
    for r in &rows {
        let day = i64::from(r.start - r.start % 86_400);
        for totals in [
            &mut agent_days
                .entry((r.meter.clone(), r.agent.clone(), day))
                .or_insert_with(|| (r.aggregation.clone(), Totals::default()))
                .1,
            &mut cells
                .entry((r.meter.clone(), r.group_key.clone(), r.agent.clone(), day))
                .or_insert_with(|| (r.aggregation.clone(), Totals::default()))
                .1,
            &mut per
                .entry((r.agent.clone(), r.meter.clone()))
                .or_insert_with(|| (r.aggregation.clone(), Totals::default()))
                .1,
            &mut days
                .entry((r.meter.clone(), day))
                .or_insert_with(|| (r.aggregation.clone(), Totals::default()))
                .1,
        ] {
            if totals.add(r).is_none() {
                tracing::warn!(customer, meter = %r.meter, "usage too large to show exactly");
            }
        }
    }
    let quantity = |(aggregation, t): &(String, Totals)| {
        t.quantity(aggregation).unwrap_or_default().normalize()
    };
    let mut by_meter_day: BTreeMap<String, BTreeMap<i64, Decimal>> = BTreeMap::new();
    for ((meter, day), v) in &days {
        by_meter_day
            .entry(meter.clone())
            .or_default()
            .insert(*day, quantity(v));
    }
    let mut by_meter_agent_day: BTreeMap<String, BTreeMap<String, BTreeMap<i64, Decimal>>> =
        BTreeMap::new();
    for ((meter, agent, day), v) in &agent_days {
        by_meter_agent_day
            .entry(meter.clone())
            .or_default()
            .entry(agent.clone())
            .or_default()
            .insert(*day, quantity(v));
    }
    Ok(Usage {
        aggregations: days
            .iter()
            .map(|((meter, _), (aggregation, _))| (meter.clone(), aggregation.clone()))
            .collect(),
        cells: cells
            .iter()
            .map(|((meter, group_key, agent, day), v)| Cell {
                meter: meter.clone(),
                group_key: group_key.clone(),
                agent: agent.clone(),
                day: *day,
                quantity: quantity(v),
            })
            .collect(),
        by_meter_agent_day,
        by_agent_meter: per
            .iter()
            .map(|((agent, meter), v)| AgentMeter {
                agent: agent.clone(),
                meter: meter.clone(),
                quantity: quantity(v),
                events: v.1.events,
            })
            .collect(),
        by_meter_day,
    })
}
