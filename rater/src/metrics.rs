//! Every metric the rater emits.

use std::time::Duration;

use metrics::{counter, histogram};

/// One rating pass: how long it took and how many charges it wrote.
pub fn pass(took: Duration, charges: usize) {
    histogram!("tally_rater_pass_seconds").record(took.as_secs_f64());
    counter!("tally_rater_charges_written_total").increment(charges as u64);
}

/// A failed pass.
pub fn pass_failed() {
    counter!("tally_rater_pass_errors_total").increment(1);
}

/// Usage rows with no price (no subscription, or the plan does not price the meter).
pub fn unpriced(cause: &'static str, n: u64) {
    counter!("tally_rater_unpriced_usage_total", "cause" => cause).increment(n);
}
