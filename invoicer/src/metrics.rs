//! Every metric the invoicer emits.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Declares the counters at zero, so dashboards and alerts see them before the first event.
pub fn declare() {
    for name in [
        "tally_invoicer_invoices_written_total",
        "tally_invoicer_invoices_finalized_total",
        "tally_invoicer_pass_errors_total",
        "tally_invoicer_numbering_conflicts_total",
    ] {
        counter!(name).absolute(0);
    }
    for reason in BuildFailure::ALL {
        counter!("tally_invoicer_invoice_failures_total", "reason" => reason.code()).absolute(0);
    }
}

/// Why one invoice could not be built (the label of `tally_invoicer_invoice_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildFailure {
    MixedCurrencies,
    /// A charge in a currency the domain does not know.
    Currency,
    /// A charge whose customer id does not validate.
    Customer,
    Overflow,
    Empty,
    /// Built and numbered, but its document could not be frozen in NATS KV.
    Finalize,
}

impl BuildFailure {
    pub const ALL: [BuildFailure; 6] = [
        BuildFailure::MixedCurrencies,
        BuildFailure::Currency,
        BuildFailure::Customer,
        BuildFailure::Overflow,
        BuildFailure::Empty,
        BuildFailure::Finalize,
    ];

    pub fn code(self) -> &'static str {
        match self {
            BuildFailure::MixedCurrencies => "mixed_currencies",
            BuildFailure::Currency => "currency",
            BuildFailure::Customer => "customer",
            BuildFailure::Overflow => "overflow",
            BuildFailure::Empty => "empty",
            BuildFailure::Finalize => "finalize",
        }
    }
}

/// One customer's invoice for one period could not be built this pass (the others were);
/// alert `TallyInvoiceNotBuilt`.
pub fn invoice_failed(reason: BuildFailure) {
    counter!("tally_invoicer_invoice_failures_total", "reason" => reason.code()).increment(1);
}

/// One invoicing pass that ran to its end (a pass stopped by shutdown is not a sample).
pub fn pass(took: Duration) {
    histogram!("tally_invoicer_pass_seconds").record(took.as_secs_f64());
}

/// One batch of a pass written: its invoices, and how many of them it finalized.
pub fn batch_written(invoices: usize, finalized: usize) {
    counter!("tally_invoicer_invoices_written_total").increment(invoices as u64);
    counter!("tally_invoicer_invoices_finalized_total").increment(finalized as u64);
}

/// A failed pass.
pub fn pass_failed() {
    counter!("tally_invoicer_pass_errors_total").increment(1);
}

/// A numbering compare-and-set lost to another writer (retried).
pub fn numbering_conflict() {
    counter!("tally_invoicer_numbering_conflicts_total").increment(1);
}

/// The last reconciliation: unexplained money difference (minor units, summed over
/// currencies as absolute values) and (customer, meter, period) quantity mismatches.
pub fn reconciliation(difference_minor: i64, quantity_mismatches: usize) {
    gauge!("tally_invoicer_reconciliation_difference_minor").set(difference_minor as f64);
    gauge!("tally_invoicer_reconciliation_quantity_mismatches").set(quantity_mismatches as f64);
}
