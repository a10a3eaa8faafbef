//! A subscription's lifecycle in the catalog: validating one `[[subscriptions]]` record
//! (start, end, state, trial) and chaining a customer's records into the parts of time each
//! one covers. Pure.
//!
//! - A record covers `[effective_from, to)`, where `to` is the earliest of its own `ends_at`
//!   and the next record's `effective_from`.
//! - A `paused` or `cancelled` record covers nothing (`to == from`): it ends the record
//!   before it at its instant. A later `active` record resumes (or restarts) billing.
//! - The record's billing cycle is its `interval` (weekly, monthly, quarterly, annual) on its
//!   anchors; its usage cycle is `usage_interval` (default the same): `flat` fees are billed
//!   per billing period, every other price (usage, minimums) per usage period.
//! - A customer may have several lines (`line`, one per product line), each its own chain of
//!   records with its own plan and terms; two lines whose plans price one meter are refused.
//! - A record may pin its plan version (`plan_version`); a migration is a new record of the
//!   same line from the migration instant with the new version.
//! - A trial splits its record at the trial's end: the trial part carries a `trial` coupon
//!   (percent off every charge, 100 by default) in front of the record's own coupons; the
//!   rest is the paid part. A split inside a billing period prorates both parts' fees and
//!   minimums like any subscription change.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use tally_domain::{BillingCycle, Currency, CustomerId, Meter, MeterSlug};
use tally_platform::ConfigError;

use super::{Plan, Subscription};
use crate::catalog::zone::ZonedCycle;
use crate::config::{Interval, SubscriptionSpec, SubscriptionState, TrialSpec};
use crate::pricing::discount::{Coupon, Duration, Off};

/// The trial of a subscription record, resolved to an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    /// Where the trial ends and the paid terms begin.
    pub ends_ms: i64,
    pub percent_off: Decimal,
}

/// The coupon id of a trial's discount line.
pub const TRIAL_COUPON: &str = "trial";

/// Validates record `i` (errors name `subscriptions[i].<field>`); the plan's existence is
/// the caller's check.
pub(super) fn validate_subscription(
    i: usize,
    mut s: SubscriptionSpec,
    meters: &[Meter],
) -> Result<(CustomerId, Subscription), ConfigError> {
    let setting = |f: &str| format!("subscriptions[{i}].{f}");
    let customer = CustomerId::new(std::mem::take(&mut s.customer))
        .map_err(|e| ConfigError::invalid(setting("customer"), e))?;
    let (cycle, usage_cycle) = zoned_cycles(i, &s)?;
    let coupons = s
        .coupons
        .into_iter()
        .enumerate()
        .map(|(j, c)| {
            crate::catalog::plan::validate_coupon(c, meters)
                .map_err(|(f, d)| ConfigError::invalid(setting(&format!("coupons[{j}].{f}")), d))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let from_ms = s.effective_from.map_or(i64::MIN, |t| t.timestamp_millis());
    let currency = s
        .currency
        .map(|c| c.parse::<Currency>())
        .transpose()
        .map_err(|e| ConfigError::invalid(setting("currency"), e))?;
    let ends_ms = s.ends_at.map_or(i64::MAX, |t| t.timestamp_millis());
    if ends_ms <= from_ms {
        return Err(ConfigError::invalid(
            setting("ends_at"),
            "must be after effective_from",
        ));
    }
    if !s.state.is_active() && (s.ends_at.is_some() || s.trial.is_some()) {
        return Err(ConfigError::invalid(
            setting("state"),
            "a paused or cancelled record takes neither ends_at nor trial",
        ));
    }
    let trial = s
        .trial
        .map(|t| trial(&t, from_ms, &cycle))
        .transpose()
        .map_err(|(f, d)| ConfigError::invalid(setting(&format!("trial{f}")), d))?;
    Ok((
        customer,
        Subscription {
            plan: s.plan,
            cycle,
            usage_cycle,
            coupons,
            tax_region: s.tax_region,
            tax_exempt: s.tax_exempt,
            from_ms,
            to_ms: i64::MAX,
            currency,
            state: s.state,
            ends_ms,
            trial,
            line: s.line.unwrap_or_default(),
            plan_version: s.plan_version,
        },
    ))
}

/// Record `i`'s billing and usage cycles in its time zone (errors name the anchor, interval
/// or time zone field).
fn zoned_cycles(i: usize, s: &SubscriptionSpec) -> Result<(ZonedCycle, ZonedCycle), ConfigError> {
    let setting = |f: &str| format!("subscriptions[{i}].{f}");
    let cycle_of = |interval: Option<Interval>, field: &str| {
        let c = billing_cycle(interval, s.billing_anchor_day, s.billing_anchor_month);
        c.validate().map_err(|e| {
            let f = match e.split_whitespace().next() {
                Some("anchor_month") => "billing_anchor_month",
                Some("anchor_day" | "anchor_weekday") => "billing_anchor_day",
                _ => field,
            };
            ConfigError::invalid(setting(f), e)
        })?;
        Ok::<_, ConfigError>(c)
    };
    let cycle = cycle_of(s.interval, "interval")?;
    let usage_cycle = cycle_of(s.usage_interval.or(s.interval), "usage_interval")?;
    let zone = s
        .time_zone
        .as_ref()
        .map(|z| {
            z.parse::<chrono_tz::Tz>().map_err(|_| {
                ConfigError::invalid(
                    setting("time_zone"),
                    format!("{z:?} is not an IANA time zone (e.g. Europe/Berlin)"),
                )
            })
        })
        .transpose()?;
    Ok((
        ZonedCycle { cycle, zone },
        ZonedCycle {
            cycle: usage_cycle,
            zone,
        },
    ))
}

/// The billing cycle of an interval (default monthly) with the record's anchors.
fn billing_cycle(
    interval: Option<Interval>,
    anchor_day: u32,
    anchor_month: Option<u32>,
) -> BillingCycle {
    let months = |months| BillingCycle::Months {
        months,
        anchor_month: anchor_month.unwrap_or(1),
        anchor_day,
    };
    match interval {
        None | Some(Interval::Monthly) => BillingCycle::Monthly { anchor_day },
        Some(Interval::Weekly) => BillingCycle::Weekly {
            anchor_weekday: anchor_day,
        },
        Some(Interval::Quarterly) => months(3),
        Some(Interval::Annual) => months(12),
    }
}

/// Resolves a trial starting at `from_ms` (errors: the field suffix and why).
fn trial(t: &TrialSpec, from_ms: i64, cycle: &ZonedCycle) -> Result<Trial, (String, String)> {
    if from_ms == i64::MIN {
        return Err((
            String::new(),
            "a trial needs the subscription's effective_from".into(),
        ));
    }
    let percent_off = t.percent_off.unwrap_or(Decimal::ONE_HUNDRED);
    if percent_off <= Decimal::ZERO || percent_off > Decimal::ONE_HUNDRED {
        return Err((
            ".percent_off".into(),
            format!("{percent_off} is not above 0 and at most 100"),
        ));
    }
    let ends_ms = match (t.days, t.periods) {
        (Some(d), None) if d > 0 => cycle.add_days(from_ms, d),
        (None, Some(n)) if n > 0 && n <= crate::pricing::discount::PERIODS_MAX => {
            let mut period = cycle.period_containing(from_ms);
            for _ in 1..n {
                period = cycle.next(&period);
            }
            period.end_ms
        }
        _ => {
            return Err((
                String::new(),
                "needs exactly one of days (positive) or periods (1 to 1200)".into(),
            ))
        }
    };
    Ok(Trial {
        ends_ms,
        percent_off,
    })
}

/// A customer's records, sorted, each cut at its end or the next record's start, paused and
/// cancelled ones covering nothing, and each trial split into its trial and paid parts.
pub(super) fn chain(mut list: Vec<Subscription>) -> Vec<Subscription> {
    list.sort_by_key(|s| s.from_ms);
    for k in 0..list.len() {
        let next = list.get(k + 1).map_or(i64::MAX, |n| n.from_ms);
        let s = &mut list[k];
        s.to_ms = if s.state.is_active() {
            next.min(s.ends_ms)
        } else {
            s.from_ms
        };
    }
    let mut out = Vec::with_capacity(list.len());
    for s in list {
        let Some(t) = s.trial.filter(|_| s.state.is_active()) else {
            out.push(s);
            continue;
        };
        let mut trial_part = s.clone();
        trial_part.to_ms = s.to_ms.min(t.ends_ms);
        trial_part.coupons.insert(
            0,
            Coupon {
                id: TRIAL_COUPON.into(),
                off: Off::Percent(t.percent_off),
                meter: None,
                starts_ms: s.from_ms,
                duration: Duration::Forever,
            },
        );
        out.push(trial_part);
        if t.ends_ms < s.to_ms {
            out.push(Subscription {
                from_ms: t.ends_ms,
                trial: None,
                ..s
            });
        }
    }
    out
}

/// A customer's records chained per line (each line by itself, [`chain`]), sorted by line
/// then start.
pub(super) fn chain_lines(list: Vec<Subscription>) -> Vec<Subscription> {
    let mut lines: BTreeMap<String, Vec<Subscription>> = BTreeMap::new();
    for s in list {
        lines.entry(s.line.clone()).or_default().push(s);
    }
    lines.into_values().flat_map(chain).collect()
}

/// Refuses a customer whose lines could price one meter (a version of one line's plan and
/// one of another line's plan share a meter): each meter's usage belongs to one line.
pub(super) fn check_lines(
    customer: &CustomerId,
    list: &[Subscription],
    plans: &HashMap<String, Vec<Plan>>,
) -> Result<(), ConfigError> {
    let mut meters_of: BTreeMap<&str, BTreeMap<&MeterSlug, &str>> = BTreeMap::new();
    for s in list {
        let meters = meters_of.entry(s.line.as_str()).or_default();
        for p in plans.get(&s.plan).into_iter().flatten() {
            for m in p.prices.keys() {
                meters.insert(m, &p.id);
            }
        }
    }
    let lines: Vec<(&&str, &BTreeMap<&MeterSlug, &str>)> = meters_of.iter().collect();
    for (i, (a, ma)) in lines.iter().enumerate() {
        for (b, mb) in &lines[i + 1..] {
            if let Some((m, plan)) = ma.iter().find(|(m, _)| mb.contains_key(*m)) {
                return Err(ConfigError::invalid(
                    format!("subscriptions.{customer}.line"),
                    format!(
                        "lines {a:?} and {b:?} both price meter {m} (plans {plan} and {}); each \
                         meter is billed by one line",
                        mb[m]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Where a customer's chained records end for good: at a last `cancelled` record, or at the
/// `ends_at` of a last active one; none while the last record is open or paused.
pub(super) fn final_end(list: &[&Subscription]) -> Option<i64> {
    let last = list.last()?;
    match last.state {
        SubscriptionState::Cancelled => Some(last.from_ms),
        SubscriptionState::Active if last.ends_ms != i64::MAX && last.to_ms == last.ends_ms => {
            Some(last.ends_ms)
        }
        _ => None,
    }
}
