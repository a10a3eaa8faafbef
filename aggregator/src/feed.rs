//! A batch's notice for the live usage feed ([`tally_platform::feed`]): its partials as the
//! rows billing reads, and the spend holds its events settle.
//!
//! Pure: built from the partials the sink wrote and the batch's events; publishing is the
//! consumer's step between the rows and the commit. It never decides whether a batch counts.

use std::collections::BTreeSet;

use tally_platform::feed::{self, HoldRef, Notice};
use tally_platform::store::datetime_secs;
use tally_platform::usage::{Units, UsageRow};

use crate::batch::Batch;
use crate::partials::Partial;
use crate::sink::{group_key, Meters};

/// A decimal with at most 9 places (every quantity the classifier accepts) as storage units.
fn units(d: rust_decimal::Decimal) -> Units {
    let mut d = d;
    d.rescale(9);
    Units(d.mantissa())
}

/// The partial as the row a usage read returns (window resolution, its own agent).
fn row(p: &Partial<'_>, meters: &Meters<'_>, window_secs: u32) -> UsageRow {
    let meter = &meters.list[p.meter];
    let start = datetime_secs(p.window_start_ms);
    UsageRow {
        customer: p.customer.to_owned(),
        agent: p.agent.to_owned(),
        meter: meter.slug.as_str().to_owned(),
        aggregation: meter.aggregation.as_str().to_owned(),
        group_key: group_key(&meters.group_names[p.meter], p.group_values),
        group_names: meters.group_names[p.meter].clone(),
        group_values: p.group_values.to_vec(),
        start,
        end: start.saturating_add(window_secs),
        events: p.events,
        sum: units(p.sum),
        min: units(p.min),
        max: units(p.max),
        latest: units(p.latest),
        latest_time_ms: p.latest_time_ms,
        latest_event_id: p.latest_event_id.to_owned(),
        unique_values: p.unique_values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

/// The notices of one written batch: its partials and its events' holds, in chunks.
pub fn notices(
    batch: &Batch,
    partials: &[Partial<'_>],
    meters: &Meters<'_>,
    window_secs: u32,
    (part, batch_id, bseq): (u32, &str, u64),
) -> Vec<Notice> {
    let holds: BTreeSet<(&str, &str)> = batch
        .events
        .iter()
        .filter_map(|e| e.event.hold_id().map(|h| (e.event.customer(), h)))
        .collect();
    let holds = holds
        .into_iter()
        .map(|(customer, hold)| HoldRef {
            customer: customer.to_owned(),
            hold: hold.to_owned(),
        })
        .collect();
    let rows = partials
        .iter()
        .map(|p| row(p, meters, window_secs))
        .collect();
    feed::chunks(part, batch_id, bseq, rows, holds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    #[test]
    fn quantities_become_units_of_10_to_the_minus_9() {
        assert_eq!(units(Decimal::new(15, 1)), Units(1_500_000_000));
        assert_eq!(units(Decimal::new(1, 9)), Units(1));
        assert_eq!(
            units(Decimal::from(1_000_000_000_000_000u64)),
            Units(10i128.pow(24))
        );
        assert_eq!(
            units(Decimal::new(15, 1)).decimal(),
            Some(Decimal::new(15, 1))
        );
    }
}
