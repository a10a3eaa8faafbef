//! Every metric tally-payments emits. Labels are bounded (outcomes, kinds, status classes),
//! never a customer or an invoice id.

use std::time::Duration;

/// A webhook or manual payment event processed, by outcome.
pub fn webhook(outcome: &str) {
    metrics::counter!("tally_payments_events_total", "outcome" => outcome.to_owned()).increment(1);
}

/// A webhook refused before it was processed (bad signature, bad payload).
pub fn webhook_refused(reason: &'static str) {
    metrics::counter!("tally_payments_webhooks_refused_total", "reason" => reason).increment(1);
}

/// A ledger journal posted, by kind.
pub fn journal(kind: &'static str) {
    metrics::counter!("tally_payments_journals_total", "kind" => kind).increment(1);
}

/// A customer whose wallet a pass could not update (retried next pass).
pub fn wallet_failure() {
    metrics::counter!("tally_payments_wallet_failures_total").increment(1);
}

/// Wallet movements a pass appended.
pub fn wallet_movements(n: usize) {
    metrics::counter!("tally_payments_wallet_movements_total").increment(n as u64);
}

/// A notification delivery attempt, by result (`delivered`, `failed`).
pub fn delivery(result: &'static str, took: Duration) {
    metrics::counter!("tally_payments_notification_deliveries_total", "result" => result)
        .increment(1);
    metrics::histogram!("tally_payments_notification_delivery_seconds").record(took.as_secs_f64());
}

/// A notification decided by dunning, by kind.
pub fn notification(kind: &'static str) {
    metrics::counter!("tally_payments_notifications_total", "kind" => kind).increment(1);
}

/// A spend alert consumed, by outcome (`recorded`, `duplicate`, `without_url`, `malformed`).
pub fn spend_alert(outcome: &'static str) {
    metrics::counter!("tally_payments_spend_alerts_total", "outcome" => outcome).increment(1);
}

/// A spend alert notification delivered, `lag_ms` after the threshold was crossed (the
/// alert's `crossed_at_ms`).
pub fn spend_alert_delivered(lag_ms: i64) {
    metrics::histogram!("tally_payments_spend_alert_delivery_lag_seconds")
        .record(lag_ms.max(0) as f64 / 1000.0);
}

/// A spend alert notification given up after `dunning.delivery_attempts_max` attempts.
pub fn spend_alert_abandoned() {
    metrics::counter!("tally_payments_spend_alerts_abandoned_total").increment(1);
}

/// An HTTP request answered, by route group and status class.
pub fn request(route: &'static str, status: u16, took: Duration) {
    let class = match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("tally_payments_requests_total", "route" => route, "status" => class)
        .increment(1);
    metrics::histogram!("tally_payments_request_seconds", "route" => route)
        .record(took.as_secs_f64());
}

/// The trial balance difference summed over currencies (always 0 unless the ledger is broken).
pub fn trial_balance_difference(minor: i128) {
    metrics::gauge!("tally_payments_trial_balance_difference_minor").set(minor as f64);
}

/// Declares the counters at zero and the trial-balance gauge, so dashboards and alerts see
/// the series before the first event.
pub fn declare() {
    for outcome in ["paid", "duplicate", "payment_failed"] {
        metrics::counter!("tally_payments_events_total", "outcome" => outcome).absolute(0);
    }
    for reason in ["signature", "payload"] {
        metrics::counter!("tally_payments_webhooks_refused_total", "reason" => reason).absolute(0);
    }
    for result in ["delivered", "failed"] {
        metrics::counter!("tally_payments_notification_deliveries_total", "result" => result)
            .absolute(0);
    }
    for outcome in ["recorded", "duplicate", "without_url", "malformed"] {
        metrics::counter!("tally_payments_spend_alerts_total", "outcome" => outcome).absolute(0);
    }
    metrics::counter!("tally_payments_spend_alerts_abandoned_total").absolute(0);
    metrics::gauge!("tally_payments_trial_balance_difference_minor").set(0.0);
}

/// A payment retry request sent to a gateway, by result (`succeeded`, `failed`).
pub fn gateway_request(result: &'static str) {
    metrics::counter!("tally_payments_gateway_requests_total", "result" => result).increment(1);
}
