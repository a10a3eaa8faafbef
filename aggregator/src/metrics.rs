//! Every metric the aggregator emits, in one place. Names follow Prometheus conventions
//! (`tally_aggregator_<what>_<unit>`, counters `_total`, `_seconds`, `_bytes`); labels are
//! bounded (outcome, reason code, table), never an event, customer or agent id. The dashboards
//! and alert rules in dashboards/ query these names (tests/ops checks they exist).

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tally_domain::Reason;

/// Declares every counter at zero (each outcome, each reason code), so `rate()` and the alert
/// rules see a series from the start instead of nothing until the first failure.
pub fn init() {
    for outcome in ["accepted", "duplicate", "rejected"] {
        events(outcome, 0);
    }
    for reason in Reason::ALL {
        counter!("tally_aggregator_rejected_events_total", "reason" => reason.code()).absolute(0);
    }
    counter!("tally_aggregator_batches_total").absolute(0);
    counter!("tally_aggregator_commit_errors_total").absolute(0);
    committed(0, 0);
    sealed(0, 0);
    counter!("tally_aggregator_lease_acquired_total").absolute(0);
    counter!("tally_aggregator_fenced_total").absolute(0);
    counter!("tally_aggregator_aborted_batches_total").absolute(0);
    counter!("tally_aggregator_consumer_resets_total").absolute(0);
    limit_usage(crate::limits::Usage::default());
}

/// Messages by outcome: `accepted`, `duplicate`, `rejected`.
pub fn events(outcome: &'static str, n: u64) {
    counter!("tally_aggregator_events_total", "outcome" => outcome).increment(n);
}

/// Rejections by reason code.
pub fn rejected(reason: Reason) {
    counter!("tally_aggregator_rejected_events_total", "reason" => reason.code()).increment(1);
}

/// A committed batch: its size and how long the commit took.
pub fn flushed(messages: usize, took: Duration) {
    counter!("tally_aggregator_batches_total").increment(1);
    histogram!("tally_aggregator_batch_messages").record(messages as f64);
    histogram!("tally_aggregator_flush_seconds").record(took.as_secs_f64());
}

/// One ClickHouse insert.
pub fn insert_seconds(table: &'static str, took: Duration) {
    histogram!("tally_aggregator_insert_seconds", "table" => table).record(took.as_secs_f64());
}

/// A failed commit attempt (it is retried).
pub fn commit_failed() {
    counter!("tally_aggregator_commit_errors_total").increment(1);
}

/// Event time to commit, per accepted event (recorded per batch from its oldest event).
pub fn event_to_commit(seconds: f64) {
    histogram!("tally_aggregator_event_to_commit_seconds").record(seconds);
}

/// Current size of the committed dedup set: ids and heap bytes.
pub fn dedup_size(ids: usize, bytes: usize) {
    gauge!("tally_aggregator_dedup_ids").set(ids as f64);
    gauge!("tally_aggregator_dedup_bytes").set(bytes as f64);
}

/// Events and meter readings durably committed by a batch.
pub fn committed(events: usize, readings: usize) {
    counter!("tally_aggregator_committed_events_total").increment(events as u64);
    counter!("tally_aggregator_committed_readings_total").increment(readings as u64);
}

/// Consumer lag: messages not yet delivered, and delivered but not yet acknowledged.
pub fn lag(pending: u64, ack_pending: usize) {
    gauge!("tally_aggregator_consumer_pending_messages").set(pending as f64);
    gauge!("tally_aggregator_consumer_ack_pending_messages").set(ack_pending as f64);
}

/// Messages in the dead-letter stream (its depth; limits retention ages them out).
pub fn dead_letter_depth(messages: u64) {
    gauge!("tally_aggregator_dead_letter_messages").set(messages as f64);
}

/// A day sealed: its rows written into `usage_days`.
pub fn sealed(days: u64, rows: u64) {
    counter!("tally_aggregator_sealed_days_total").increment(days);
    counter!("tally_aggregator_sealed_rollups_total").increment(rows);
}

/// The newest sealed day (seconds since the epoch of its start).
pub fn sealed_through(day_start_secs: u32) {
    gauge!("tally_aggregator_sealed_through_seconds").set(f64::from(day_start_secs));
}

/// Batch or seal ids recorded as aborted (a failed attempt, or unfinished at a takeover).
pub fn aborted(n: usize) {
    counter!("tally_aggregator_aborted_batches_total").increment(n as u64);
}

/// The consumer was recreated from its ack floor (a takeover, or a lost delivery), so
/// messages are read again in stream order.
pub fn consumer_reset() {
    counter!("tally_aggregator_consumer_resets_total").increment(1);
}

/// The highest share of each per-customer bound any customer of this instance uses (0 to 1;
/// 1 means some customer's events are being refused for it). One series per bound, never a
/// customer label: the dead letters name the customer.
pub fn limit_usage(u: crate::limits::Usage) {
    for (limit, ratio) in [
        ("events_per_minute", u.events_per_minute),
        ("ids", u.ids),
        ("groups", u.groups),
        ("unique_values", u.unique_values),
    ] {
        gauge!("tally_aggregator_customer_limit_usage_ratio", "limit" => limit).set(ratio);
    }
}

/// A stream's size and how full it is against its configured limits (`stream` is `usage` or
/// `dead_letter`): the larger of bytes / `max_bytes` and messages / `max_msgs`, 0 without
/// limits. The usage stream refuses new events when full (discard new); the dead-letter
/// stream drops its oldest records.
pub fn stream_size(stream: &'static str, info: &async_nats::jetstream::stream::Info) {
    gauge!("tally_aggregator_stream_bytes", "stream" => stream).set(info.state.bytes as f64);
    gauge!("tally_aggregator_stream_fill_ratio", "stream" => stream).set(fill_ratio(info));
}

/// The larger of bytes / `max_bytes` and messages / `max_messages`; 0 without limits.
pub fn fill_ratio(info: &async_nats::jetstream::stream::Info) -> f64 {
    let share = |n: u64, max: i64| {
        if max > 0 {
            n as f64 / max as f64
        } else {
            0.0
        }
    };
    share(info.state.bytes, info.config.max_bytes)
        .max(share(info.state.messages, info.config.max_messages))
}
