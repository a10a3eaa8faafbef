//! Every metric the spend deciders emit: `tally_spend_<what>_<unit>`; labels are bounded (an
//! operation, a reason code), never a customer id.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use super::protocol::Reason;

const REASONS: [Reason; 10] = [
    Reason::BudgetExceeded,
    Reason::UnknownCustomer,
    Reason::UnknownMeter,
    Reason::InvalidRequest,
    Reason::QuantityTooLarge,
    Reason::UnknownHold,
    Reason::Unavailable,
    Reason::EntitlementExceeded,
    Reason::NotEntitled,
    Reason::TooManyHolds,
];

/// Declares the counters at zero, so `rate()` and alert rules see a series from the start.
pub fn init() {
    for op in ["authorize", "release", "feature"] {
        counter!("tally_spend_decisions_total", "op" => op, "outcome" => "allowed").absolute(0);
        for r in REASONS {
            counter!("tally_spend_decisions_total", "op" => op, "outcome" => r.code()).absolute(0);
        }
    }
    for end in ["settled", "expired"] {
        counter!("tally_spend_holds_ended_total", "end" => end).absolute(0);
    }
    counter!("tally_spend_alerts_sent_total").absolute(0);
    counter!("tally_spend_wallet_unreadable_total").absolute(0);
    counter!("tally_spend_wallet_reload_failures_total").absolute(0);
    counter!("tally_spend_rebuilds_total", "cause" => "takeover").absolute(0);
    counter!("tally_spend_rebuilds_total", "cause" => "aborted_batch").absolute(0);
    gauge!("tally_spend_holds_active").set(0.0);
}

/// One request decided, and how long it took from receipt to the answer being sent.
pub fn decided(op: &'static str, reason: Option<Reason>, took: Duration) {
    let outcome = reason.map_or("allowed", Reason::code);
    counter!("tally_spend_decisions_total", "op" => op, "outcome" => outcome).increment(1);
    histogram!("tally_spend_decision_seconds", "op" => op).record(took.as_secs_f64());
}

pub fn holds_active(n: usize) {
    gauge!("tally_spend_holds_active").set(n as f64);
}

pub fn holds_expired(n: usize) {
    if n > 0 {
        counter!("tally_spend_holds_ended_total", "end" => "expired").increment(n as u64);
    }
}

pub fn holds_settled(n: usize) {
    counter!("tally_spend_holds_ended_total", "end" => "settled").increment(n as u64);
}

/// A threshold notification: sent by this instance, or found already sent.
pub fn alert(sent: bool) {
    if sent {
        counter!("tally_spend_alerts_sent_total").increment(1);
    }
}

/// The book was rebuilt from storage.
pub fn rebuild(cause: &'static str) {
    counter!("tally_spend_rebuilds_total", "cause" => cause).increment(1);
}

/// A committed batch reached the book this long after JetStream stored its notice.
pub fn feed_lag(lag: Duration) {
    histogram!("tally_spend_feed_lag_seconds").record(lag.as_secs_f64());
}

/// The book holds this partition's customers.
pub fn customers(n: usize) {
    gauge!("tally_spend_customers").set(n as f64);
}

/// The decider of this instance is ready (1) or standing by / rebuilding (0).
pub fn ready(ready: bool) {
    gauge!("tally_spend_ready").set(if ready { 1.0 } else { 0.0 });
}

/// A customer's wallet could not be read into a limit (its wallet budgets hold 0).
pub fn wallet_unreadable() {
    counter!("tally_spend_wallet_unreadable_total").increment(1);
}

/// Reading the wallets failed (the last ones are kept).
pub fn wallet_reload_failed() {
    counter!("tally_spend_wallet_reload_failures_total").increment(1);
}
