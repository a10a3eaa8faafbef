//! Every metric the gateway emits, in one place. Labels are bounded: HTTP status codes,
//! event outcomes and the fixed reason codes, never a key, customer or event id.

use std::time::Duration;

/// Declares the event counters at zero (each outcome, each reason code), so `rate()` and the
/// alert rules see a series from the start.
pub fn init() {
    for status in ["accepted", "duplicate", "failed"] {
        metrics::counter!("tally_gateway_events_total", "status" => status).absolute(0);
    }
    metrics::counter!("tally_gateway_in_process_resends_total").absolute(0);
    for reason in tally_domain::Reason::ALL {
        metrics::counter!("tally_gateway_rejected_events_total", "reason" => reason.code())
            .absolute(0);
    }
}

/// One answered request.
pub fn request(status: u16, elapsed: Duration) {
    metrics::counter!("tally_gateway_requests_total", "status" => status.to_string()).increment(1);
    metrics::histogram!("tally_gateway_request_seconds").record(elapsed.as_secs_f64());
}

/// Events of one request by outcome; `reasons` are the codes of rejected ones.
pub fn events(accepted: usize, duplicates: usize, failed: usize, reasons: &[&'static str]) {
    metrics::counter!("tally_gateway_events_total", "status" => "accepted")
        .increment(accepted as u64);
    metrics::counter!("tally_gateway_events_total", "status" => "duplicate")
        .increment(duplicates as u64);
    metrics::counter!("tally_gateway_events_total", "status" => "failed").increment(failed as u64);
    for reason in reasons {
        metrics::counter!("tally_gateway_rejected_events_total", "reason" => *reason).increment(1);
    }
    let total = accepted + duplicates + failed + reasons.len();
    metrics::histogram!("tally_gateway_batch_events").record(total as f64);
}

/// Sends JetStream answered "duplicate message id is in process", each sent again
/// (`crate::publisher::settle`).
pub fn in_process(resent: u64) {
    metrics::counter!("tally_gateway_in_process_resends_total").increment(resent);
}

/// A request refused as a whole, by stable code.
pub fn refused(code: &'static str) {
    metrics::counter!("tally_gateway_refused_requests_total", "code" => code).increment(1);
}

/// Keys loaded by the last refresh.
pub fn keys_loaded(n: usize) {
    metrics::gauge!("tally_gateway_api_keys").set(n as f64);
}
