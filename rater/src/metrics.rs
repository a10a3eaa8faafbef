//! Every metric the rater emits, in one place: `tally_rater_<what>_<unit>` (counters `_total`,
//! durations `_seconds`); labels are bounded (the cause of unpriced usage), never a customer id.
//! The dashboards and alert rules in dashboards/ query these names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};

/// Declares every counter at zero, so `rate()` and the alert rules see a series from the start.
pub fn init() {
    counter!("tally_rater_charges_written_total").absolute(0);
    counter!("tally_rater_pass_errors_total").absolute(0);
    for cause in ["no_subscription", "no_price"] {
        unpriced(cause, 0);
    }
    for reason in [
        "quantity_overflow",
        "unreadable",
        "charge_overflow",
        "catalog_conflict",
    ] {
        counter!("tally_rater_customer_failures_total", "reason" => reason).absolute(0);
    }
    catalog_conflicts(&[]);
}

/// The stored catalog records set aside and the customers quarantined by the catalog of the
/// last pass, by kind and outcome (docs/OPERATIONS.md, "Conflicting catalog records"); every
/// series is set, so one resolved drops to zero.
pub fn catalog_conflicts(conflicts: &[crate::catalog::Conflict]) {
    use crate::catalog::{ConflictKind, Outcome};
    for kind in ConflictKind::ALL {
        for outcome in [Outcome::SetAside, Outcome::Quarantined] {
            let n = conflicts
                .iter()
                .filter(|c| c.kind == kind && c.outcome == outcome)
                .count();
            gauge!(
                "tally_rater_catalog_conflicts",
                "kind" => kind.code(),
                "outcome" => outcome.code()
            )
            .set(n as f64);
        }
    }
}

/// A customer left out of a pass (its usage or pricing failed); the others were rated. The
/// alert `RaterCustomerFailing` fires on it (docs/OPERATIONS.md has the runbook).
pub fn customer_failed(reason: &'static str) {
    counter!("tally_rater_customer_failures_total", "reason" => reason).increment(1);
}

/// One rating pass: how long it took, how many charges it wrote, and when it finished (for the
/// "rating stalled" alert).
pub fn pass(took: Duration, charges: usize) {
    histogram!("tally_rater_pass_seconds").record(took.as_secs_f64());
    counter!("tally_rater_charges_written_total").increment(charges as u64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge!("tally_rater_last_success_timestamp_seconds").set(now);
}

/// A failed pass.
pub fn pass_failed() {
    counter!("tally_rater_pass_errors_total").increment(1);
}

/// Usage rows with no price (no subscription, or the plan does not price the meter).
pub fn unpriced(cause: &'static str, n: u64) {
    counter!("tally_rater_unpriced_usage_total", "cause" => cause).increment(n);
}

/// Events of backfill imports by outcome: `imported`, `already_present`, or the refusal's
/// code (`outside_period`, `too_recent`, ...: a fixed set, docs/INGEST.md "Backfill").
pub fn backfill_events(outcome: &'static str, n: u64) {
    counter!("tally_rater_backfill_events_total", "outcome" => outcome).increment(n);
}
