//! Cost of the current period per day, meter and agent, from the charges the rater priced
//! (`charges`, the latest version of each charge of this customer whose period contains now:
//! one bounded read on the table's sorting key) and the usage cells of [`super::usage`].
//!
//! Each charge (a meter, or a meter's group) is the exact priced amount of the period so far,
//! in minor units of the invoice currency (after FX and discounts, before tax, as its invoice
//! line). It is divided over that meter's (and group's) usage per agent and UTC day in
//! proportion to their quantities, in whole minor units by largest remainder: the parts add
//! up to the charge exactly, so a day's bars and the per-meter and per-agent totals always sum
//! to what the invoice will show for that usage. For a per-unit price a day's part is its
//! quantity times the price (up to that rounding); for tiered, volume or package prices it is
//! the day's share at the period's average unit price, not the marginal tier the day fell in.
//! Meters whose quantities do not add up over days (MIN, MAX, LATEST, UNIQUE_COUNT) and
//! charges without usage (a flat fee) are not divided: they count in the totals as
//! "not by day". The rater prices every pass: usage committed after its last pass is costed at
//! the next one (the page shows when the charges were priced).
//! It never reads another customer's charges and never invents a cent.

use std::collections::BTreeMap;

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Deserialize;
use tally_domain::Currency;

use super::usage::{additive, Usage};

/// One charge of the period, as the rater stored it (currency as stored: [`divide`] types it).
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct Charge {
    pub meter: String,
    pub group_key: String,
    pub currency: String,
    pub amount_minor: i64,
    pub period_start: u32,
    pub period_end: u32,
    pub computed_at: u32,
}

/// The charges of `customer` whose period contains `now_secs` (latest version of each).
pub async fn charges(
    db: &Client,
    customer: &str,
    now_secs: u32,
) -> Result<Vec<Charge>, clickhouse::error::Error> {
    db.query(
        "SELECT meter, group_key, currency, amount_minor, toUInt32(period_start), \
         toUInt32(period_end), toUInt32(computed_at) FROM charges FINAL \
         WHERE customer = ? AND period_start <= toDateTime(?) AND period_end > toDateTime(?) \
         ORDER BY meter, group_key",
    )
    .bind(customer)
    .bind(now_secs)
    .bind(now_secs)
    .fetch_all()
    .await
}

/// The period's cost, divided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Costs {
    /// The invoice currency (the charges'); none without charges.
    pub currency: Option<Currency>,
    /// Every charge of the period, in minor units.
    pub total_minor: i64,
    /// meter → day → minor units.
    pub by_meter_day: BTreeMap<String, BTreeMap<i64, i64>>,
    /// agent → day → minor units.
    pub by_agent_day: BTreeMap<String, BTreeMap<i64, i64>>,
    /// (agent, meter) → minor units.
    pub by_agent_meter: BTreeMap<(String, String), i64>,
    /// meter → minor units (divided or not).
    pub by_meter: BTreeMap<String, i64>,
    /// meter → minor units not divided by day (non-additive meters, charges without usage).
    pub not_by_day: BTreeMap<String, i64>,
    /// When the newest charge was priced (unix secs; 0 without charges).
    pub priced_at: u32,
    /// Charges left out: another currency than the first (logged).
    pub other_currency: usize,
}

/// `amount` divided in whole units in proportion to `weights` (non-negative, not all zero),
/// by largest remainder (ties to the earlier weight): the parts add up to `amount` exactly.
/// `None` when the weights are all zero or the arithmetic would overflow.
pub fn split(amount: i64, weights: &[Decimal]) -> Option<Vec<i64>> {
    let total: Decimal = weights.iter().try_fold(Decimal::ZERO, |acc, w| {
        acc.checked_add((*w).max(Decimal::ZERO))
    })?;
    if total <= Decimal::ZERO {
        return None;
    }
    let a = Decimal::from(amount.unsigned_abs());
    let mut parts = Vec::with_capacity(weights.len());
    let mut rests = Vec::with_capacity(weights.len());
    let mut given: i64 = 0;
    for (i, w) in weights.iter().enumerate() {
        let exact = a.checked_mul((*w).max(Decimal::ZERO))?.checked_div(total)?;
        let whole = exact.floor();
        let whole_i = i64::try_from(whole).ok()?;
        given = given.checked_add(whole_i)?;
        parts.push(whole_i);
        rests.push((exact - whole, i));
    }
    let mut left = i64::try_from(amount.unsigned_abs()).ok()? - given;
    rests.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    for (_, i) in rests.iter().cycle() {
        if left <= 0 {
            break;
        }
        parts[*i] += 1;
        left -= 1;
    }
    if amount < 0 {
        for p in &mut parts {
            *p = -*p;
        }
    }
    Some(parts)
}

impl Costs {
    /// The currency's code; empty without charges.
    pub fn code(&self) -> &'static str {
        self.currency.map_or("", |c| c.code())
    }
}

/// The charges divided over the usage (see the module docs).
pub fn divide(charges: &[Charge], usage: &Usage) -> Costs {
    let mut c = Costs::default();
    for ch in charges {
        let cur = match ch.currency.parse::<Currency>() {
            Ok(cur) => cur,
            Err(e) => {
                tracing::error!(table = "charges", meter = %ch.meter, error = %e,
                    "charge left out of the portal's costs: unknown currency");
                continue;
            }
        };
        // the period's currency is its first charge's
        if *c.currency.get_or_insert(cur) != cur {
            tracing::warn!(meter = %ch.meter, currency = %ch.currency, "a charge in another currency than the period's first; not shown");
            c.other_currency += 1;
            continue;
        }
        c.priced_at = c.priced_at.max(ch.computed_at);
        c.total_minor = c.total_minor.saturating_add(ch.amount_minor);
        *c.by_meter.entry(ch.meter.clone()).or_default() += ch.amount_minor;
        let cells: Vec<_> = usage
            .cells
            .iter()
            .filter(|u| u.meter == ch.meter && u.group_key == ch.group_key)
            .collect();
        let aggregation = usage.aggregations.get(&ch.meter).map(String::as_str);
        let parts = if aggregation.is_some_and(additive) {
            let weights: Vec<Decimal> = cells.iter().map(|u| u.quantity).collect();
            split(ch.amount_minor, &weights)
        } else {
            None
        };
        let Some(parts) = parts else {
            *c.not_by_day.entry(ch.meter.clone()).or_default() += ch.amount_minor;
            continue;
        };
        for (u, part) in cells.iter().zip(parts) {
            *c.by_meter_day
                .entry(u.meter.clone())
                .or_default()
                .entry(u.day)
                .or_default() += part;
            *c.by_agent_day
                .entry(u.agent.clone())
                .or_default()
                .entry(u.day)
                .or_default() += part;
            *c.by_agent_meter
                .entry((u.agent.clone(), u.meter.clone()))
                .or_default() += part;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::usage::Cell;

    fn d(v: i64) -> Decimal {
        Decimal::from(v)
    }

    #[test]
    fn parts_add_up_to_the_amount_by_largest_remainder() {
        assert_eq!(split(100, &[d(1), d(1), d(1)]), Some(vec![34, 33, 33]));
        assert_eq!(split(-100, &[d(1), d(1), d(1)]), Some(vec![-34, -33, -33]));
        assert_eq!(split(10, &[d(1), d(3)]), Some(vec![3, 7]));
        assert_eq!(split(1, &[d(2), d(3)]), Some(vec![0, 1]));
        assert_eq!(split(0, &[d(2), d(3)]), Some(vec![0, 0]));
        assert_eq!(split(7, &[d(0), d(5)]), Some(vec![0, 7]));
        assert_eq!(split(7, &[d(0), d(0)]), None);
        assert_eq!(split(7, &[]), None);
        let weights: Vec<Decimal> = (1..=97).map(d).collect();
        let parts = split(1_000_003, &weights).unwrap();
        assert_eq!(parts.iter().sum::<i64>(), 1_000_003);
    }

    fn cell(meter: &str, agent: &str, day: i64, q: i64) -> Cell {
        Cell {
            meter: meter.into(),
            group_key: "{}".into(),
            agent: agent.into(),
            day,
            quantity: d(q),
        }
    }

    fn charge(meter: &str, amount_minor: i64) -> Charge {
        Charge {
            meter: meter.into(),
            group_key: "{}".into(),
            currency: "USD".into(),
            amount_minor,
            period_start: 0,
            period_end: 100,
            computed_at: 42,
        }
    }

    #[test]
    fn a_charge_in_an_unknown_currency_is_left_out_and_never_sets_the_period_currency() {
        let mut bad = charge("flat", 900);
        bad.currency = "ZZZ".into();
        let mut eur = charge("flat", 50);
        eur.currency = "EUR".into();
        let c = divide(
            &[bad, charge("tokens", 400), eur, charge("flat", 300)],
            &Usage::default(),
        );
        assert_eq!(c.code(), "USD");
        assert_eq!((c.total_minor, c.other_currency), (700, 1));
        assert_eq!(c.by_meter["flat"], 300);
        assert_eq!(divide(&[], &Usage::default()).code(), "");
    }

    #[test]
    fn a_charge_is_divided_over_days_and_agents_and_adds_up() {
        let usage = Usage {
            aggregations: [
                ("tokens".into(), "SUM".into()),
                ("peak".into(), "MAX".into()),
            ]
            .into(),
            cells: vec![
                cell("tokens", "a", 0, 1_500),
                cell("tokens", "a", 86_400, 2_500),
                cell("tokens", "b", 86_400, 700),
                cell("peak", "a", 0, 9),
            ],
            ..Usage::default()
        };
        let c = divide(
            &[
                charge("tokens", 4_700),
                charge("peak", 500),
                charge("flat", 900),
            ],
            &usage,
        );
        assert_eq!(c.code(), "USD");
        assert_eq!(c.total_minor, 6_100);
        assert_eq!(
            c.by_meter_day["tokens"],
            [(0, 1_500), (86_400, 3_200)].into()
        );
        assert_eq!(c.by_agent_day["b"], [(86_400, 700)].into());
        assert_eq!(
            c.by_agent_meter[&("a".to_owned(), "tokens".to_owned())],
            4_000
        );
        assert_eq!(
            c.not_by_day,
            [("peak".into(), 500), ("flat".into(), 900)].into()
        );
        assert_eq!(c.by_meter["tokens"], 4_700);
        assert_eq!(c.priced_at, 42);
        let by_day: i64 = c.by_meter_day.values().flat_map(|d| d.values()).sum();
        assert_eq!(by_day + c.not_by_day.values().sum::<i64>(), c.total_minor);
    }
}
