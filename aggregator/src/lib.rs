//! The aggregator: the stage that turns a stream of usage events into committed usage.
//!
//! It owns consuming the `USAGE` JetStream stream with a durable pull consumer, validating
//! each event against the contract and the declared meters, deduplicating by
//! (customer, event id), assigning each meter reading to its tumbling window per (customer,
//! agent, meter, group-by values), writing raw events and readings to ClickHouse in batches
//! (the public views fold readings into per-window usage), sending rejected events to the
//! dead-letter stream with a reason, and acknowledging messages only once what they
//! contributed is durable. It does not price or invoice anything.
//!
//! # Exactly once in effect
//! 1. **Commit markers.** Every batch gets a fresh `batch_id`. Its raw events and meter
//!    readings are inserted first, then one row in `usage_batches` (the marker). Readers
//!    count only rows whose `batch_id` has a marker (the public views do so), so a crash or a
//!    failed insert before the marker (even one that wrote only some partitions) leaves rows
//!    that never count; the retry writes them again under a new `batch_id`.
//! 2. **Ambiguous marker writes.** If the marker insert fails, the aggregator asks ClickHouse
//!    whether the marker exists before retrying, so a marker that was written despite an error
//!    is never followed by a second copy of the batch.
//! 3. **Ack after commit.** Messages (accepted, duplicate or rejected) are acknowledged only
//!    after the marker is durable and every dead-letter record is acknowledged by JetStream.
//!    A crash before that redelivers them.
//! 4. **Dedup after commit.** An id joins the committed dedup set only after its batch's
//!    marker is durable; while its batch is in flight it is *pending* and a second copy waits
//!    for the batch. On start the set is rebuilt from committed raw events received within the
//!    horizon (and, when a backlog is read, from older ones as far back as its messages
//!    need), so a message redelivered after a crash (marker written, ack lost) is recognised
//!    as a duplicate and contributes nothing.
//! 5. **Deterministic identity.** A reading's identity is (customer, event id, meter), and
//!    `v_usage_readings` / `v_usage` count each identity once across committed batches. So
//!    even when two instances commit the same event (one paused past AckWait while its
//!    messages were redelivered to the other, then resumed), it counts once. The fault test
//!    (`tests/faults.rs`) shows such doubles being written and absorbed.
//! 6. **Horizon covers lateness.** Every time here is the time JetStream *received* the
//!    message (its stream timestamp), not the time the aggregator reads it: lateness and
//!    future tolerance are judged against it (so a backlog after an outage never turns events
//!    that were on time into `too_late`, and a redelivery is judged as the first delivery was),
//!    and the dedup set keeps an id for `dedup_horizon_secs` of received time. Configuration
//!    requires `dedup_horizon_secs >= allowed_lateness_secs + future_tolerance_secs`. A copy
//!    received within the horizon of the first one finds it in the set; a copy received later
//!    than that is refused as `too_late`, because the first copy was received at most
//!    `future_tolerance_secs` before the event time, so the event time is more than the
//!    allowed lateness before the second copy's. So no id is ever counted twice, however
//!    late it comes back.
//!
//! 7. **Sealing.** Once every event of a window is committed (the first message not
//!    acknowledged by any consumer of the stream was received after the window's end plus the
//!    allowed lateness, so no event of the window is still to come), the window's usage is
//!    written into `usage_rollups` under a fresh batch id and a marker: its final record
//!    (one seal per customer, window start and size). Billing does not read it: `v_usage`
//!    folds the committed readings, so a seal, a crashed seal or two racing sealers never
//!    change billed usage. See [`seal`].
//!
//! Scale-out partitions the subject space by customer (`nats.partitions`, a NATS server
//! mapping) with one consumer per partition, so a customer's dedup set and windows live in one
//! instance. See docs/RELIABILITY.md.
//!
//! # Layout
//! - [`config`]: the `[aggregator]` section.
//! - [`classify`]: one message to an accepted event with meter readings, or a rejection.
//! - [`payload`]: an accepted event's text, kept as ranges of its message payload.
//! - [`dedup`]: the pending and committed id sets.
//! - [`idset`]: the compact table behind the committed set.
//! - [`batch`]: the in-memory batch: events, windowed readings and the messages to ack.
//! - [`sink`]: ClickHouse rows and the insert-then-mark commit.
//! - [`dead_letter`]: dead-letter records.
//! - [`crash`]: crash points the fault tests arm to kill the process between two commit steps.
//! - [`recovery`]: rebuilding the dedup set at start.
//! - [`seal`]: writing the rollups of windows that can no longer change.
//! - [`consumer`]: the consume-fold-flush-ack loop.
//! - [`metrics`]: every metric this crate emits.

pub mod batch;
pub mod classify;
pub mod config;
pub mod consumer;
pub mod crash;
pub mod dead_letter;
pub mod dedup;
pub mod idset;
pub mod metrics;
pub mod payload;
pub mod recovery;
pub mod seal;
pub mod sink;

pub use config::AggregatorConfig;
pub use consumer::{run, RunError};
