//! The usage a customer sees in the portal: committed usage of the current billing period
//! (`tally_platform::usage`, bounded by the customer and the period), per agent and meter,
//! per meter (and agent) and UTC day for the charts, and per (meter, group, agent, day) cell
//! for the cost per day ([`super::cost`]). Quantities are exact decimals; windows and days
//! combine by the meter's aggregation (`usage::Totals`).
//! It never reads another customer's rows and never rounds a quantity.

use std::collections::BTreeMap;

use clickhouse::Client;
use rust_decimal::Decimal;
use tally_platform::usage::{self, Totals, UsageRow};

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
    let mut sums = Sums::default();
    for r in &rows {
        sums.add(customer, r);
    }
    Ok(sums.into_usage())
}

/// A meter's aggregation and its running totals.
type Sum = (String, Totals);

/// The rows merged at each grain the page shows (pure).
#[derive(Default)]
struct Sums {
    /// (agent, meter)
    per: BTreeMap<(String, String), Sum>,
    /// (meter, day)
    days: BTreeMap<(String, i64), Sum>,
    /// (meter, agent, day)
    agent_days: BTreeMap<(String, String, i64), Sum>,
    /// (meter, group, agent, day)
    cells: BTreeMap<(String, String, String, i64), Sum>,
}

impl Sums {
    /// Adds `r` at every grain; a sum too large to represent is logged for `customer`.
    fn add(&mut self, customer: &str, r: &UsageRow) {
        let day = i64::from(r.start - r.start % 86_400);
        let new = || (r.aggregation.clone(), Totals::default());
        for totals in [
            &mut self
                .agent_days
                .entry((r.meter.clone(), r.agent.clone(), day))
                .or_insert_with(new)
                .1,
            &mut self
                .cells
                .entry((r.meter.clone(), r.group_key.clone(), r.agent.clone(), day))
                .or_insert_with(new)
                .1,
            &mut self
                .per
                .entry((r.agent.clone(), r.meter.clone()))
                .or_insert_with(new)
                .1,
            &mut self
                .days
                .entry((r.meter.clone(), day))
                .or_insert_with(new)
                .1,
        ] {
            if totals.add(r).is_none() {
                tracing::warn!(customer, meter = %r.meter, "usage too large to show exactly");
            }
        }
    }

    /// The view: each sum's quantity by its meter's aggregation, normalized (zero when it
    /// cannot be represented).
    fn into_usage(self) -> Usage {
        let mut by_meter_day: BTreeMap<String, BTreeMap<i64, Decimal>> = BTreeMap::new();
        for ((meter, day), v) in &self.days {
            by_meter_day
                .entry(meter.clone())
                .or_default()
                .insert(*day, quantity(v));
        }
        let mut by_meter_agent_day: BTreeMap<String, BTreeMap<String, BTreeMap<i64, Decimal>>> =
            BTreeMap::new();
        for ((meter, agent, day), v) in &self.agent_days {
            by_meter_agent_day
                .entry(meter.clone())
                .or_default()
                .entry(agent.clone())
                .or_default()
                .insert(*day, quantity(v));
        }
        Usage {
            aggregations: self
                .days
                .iter()
                .map(|((meter, _), (aggregation, _))| (meter.clone(), aggregation.clone()))
                .collect(),
            cells: self
                .cells
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
            by_agent_meter: self
                .per
                .iter()
                .map(|((agent, meter), v)| AgentMeter {
                    agent: agent.clone(),
                    meter: meter.clone(),
                    quantity: quantity(v),
                    events: v.1.events,
                })
                .collect(),
            by_meter_day,
        }
    }
}

fn quantity((aggregation, t): &Sum) -> Decimal {
    t.quantity(aggregation).unwrap_or_default().normalize()
}
