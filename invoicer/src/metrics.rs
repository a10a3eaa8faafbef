//! Every metric the invoicer emits.

use std::time::Duration;

use metrics::{counter, histogram};

/// One invoicing pass.
pub fn pass(took: Duration, invoices: usize) {
    histogram!("tally_invoicer_pass_seconds").record(took.as_secs_f64());
    counter!("tally_invoicer_invoices_written_total").increment(invoices as u64);
}

/// A failed pass.
pub fn pass_failed() {
    counter!("tally_invoicer_pass_errors_total").increment(1);
}
