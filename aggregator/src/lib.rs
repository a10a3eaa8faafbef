//! The aggregator: the stage that turns a stream of usage events into committed usage.
//!
//! It owns consuming the `USAGE` JetStream stream with a durable pull consumer (one active
//! instance per partition, held by a lease), validating each event against the contract and
//! the declared meters, deduplicating by the identity (customer, source, id), assigning each
//! meter reading to its tumbling window per (customer, agent, meter, group-by values),
//! writing raw events, readings and per-window partials to ClickHouse in batches, sealing the
//! days that can no longer change into daily rollups, sending rejected events to the
//! dead-letter stream with a reason, and acknowledging messages only once what they
//! contributed counts. It does not price or invoice anything.
//!
//! # What billing reads, and why it costs what it asks for
//! Every batch writes, besides its raw events and per-event readings (lineage, audit), one
//! *partial* per (customer, agent, meter, group, window) it touched (`usage_partials`): the
//! rolled-up usage. A batch counts unless its id is in `usage_aborts`, a list that only grows
//! when an attempt fails or a partition is taken over. So a reader filters partials by its
//! range on the sorting key and by one small set, and sums them: no event is grouped by
//! identity at read time. Once a UTC day can no longer change for a partition, its usage is
//! sealed into `usage_days` (one row per customer, agent, meter and group); billing reads
//! sealed days from there and only the rest from the partials, so a month costs about a row
//! per day and group.
//!
//! # Exactly once in effect
//! 1. **One writer per partition.** Each partition's lease (`lease.rs`) is a key in NATS KV
//!    written only by compare-and-set. The holder writes an *intent* naming a fresh batch id
//!    before any row of the batch reaches ClickHouse and a *commit* once all of them did;
//!    an instance that takes the partition over wins the key first, which fences the old
//!    holder: its next intent or commit fails and it acknowledges nothing. A paused instance
//!    that resumes after its messages were redelivered (the zombie) is fenced this way.
//!    (`tests/faults.rs`, `tests/crash_points.rs`.)
//! 2. **Unfinished batches never count.** At most the batch the key names can be unfinished.
//!    The instance that takes over records it in `usage_aborts` before it consumes anything;
//!    a retry after a failed insert aborts the failed attempt before writing the next, under
//!    a new id (the intent carries the attempts whose abort is not durable yet). Rows written
//!    later by a fenced instance belong to an aborted id. So a crash at any point, a refused
//!    insert or a half-written batch counts nowhere, and its messages, never acknowledged,
//!    come back. (`tests/crash_points.rs`: a crash after the rows, after the commit, mid-ack.)
//! 3. **Ack after commit.** Messages (accepted, duplicate or rejected) are acknowledged only
//!    after the commit is in the lease and every dead-letter record is acknowledged by
//!    JetStream. A crash before that redelivers them.
//! 4. **Dedup after commit.** An id joins the committed dedup set only after its batch
//!    committed; while its batch is in flight it is *pending* and a second copy waits for the
//!    batch. A takeover rebuilds the set from the raw events that count, received within the
//!    horizon (and, when a backlog is read, from older ones as far back as its messages
//!    need), so a message redelivered after a crash (committed, ack lost) is a duplicate.
//!    Because only the holder commits, and it knows every batch committed since its
//!    takeover, no identity is committed twice: the partials can simply be summed.
//! 5. **The first copy counts.** A takeover recreates the consumer at its ack floor, and a
//!    delivery lost in transit (a gap in the delivery sequence) does the same, so messages
//!    are decided in stream order: of two copies of an identity with different payloads, the
//!    one JetStream received first is accepted and the other dead-lettered as
//!    `conflicting_duplicate`, whatever crashed between them. (`tests/crash_points.rs`.)
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
//! 7. **Sealed days never change.** A day is sealed once the first message the partition's
//!    consumer has not acknowledged was received after the day's end plus the allowed
//!    lateness, so every event of the day is committed; sealing runs between two batches,
//!    under the lease like a batch, and writes the day's rows, then its seal row. From then
//!    on the consumer refuses events for the day (`window_sealed`: only possible after the
//!    lateness was raised), so the partials a seal folded are the day's partials forever and
//!    a reader may take either. See [`seal`]. (`tests/sealing.rs`.)
//! 8. **An abort is durable before the replacement's rows exist.** A takeover records the
//!    aborts before it consumes anything; a retry records the failed attempt's abort before it
//!    writes the next intent; both then wait [`takeover::ABORT_SETTLE`]. A read takes the parts
//!    it reads and the abort set within one query: if it sees the replacement's rows, the abort
//!    was written before them, so (with the settle covering a set read before the parts) it
//!    never counts the aborted batch and its replacement together. A read at the wrong moment
//!    can miss a batch being aborted for a moment; the next read has it. Billing reads take
//!    day rows only of the seals their plan saw (`platform/src/usage.rs`).
//!
//! Scale-out partitions the subject space by customer (`nats.partitions`, a NATS server
//! mapping) with one consumer and one lease per partition, so a customer's dedup set, windows
//! and seals live in one instance; standby instances of a partition take over within
//! `lease_secs`. See docs/RELIABILITY.md.
//!
//! # Layout
//! - [`config`]: the `[aggregator]` section.
//! - [`classify`]: one message to an accepted event with meter readings, or a rejection.
//! - [`payload`]: an accepted event's text, kept as ranges of its message payload.
//! - [`dedup`]: the pending and committed id sets.
//! - [`limits`]: the per-customer bounds (rate, ids, series, distinct values), judged against
//!   what was accepted before, so a verdict survives a crash.
//! - [`committed`]: the committed set: a sorted run of ids at 20 bytes each behind a small
//!   hash table.
//! - [`idset`]: that hash table.
//! - [`batch`]: the in-memory batch: events, windowed readings and the messages to ack.
//! - [`partials`]: a batch folded into per-window partials (pure).
//! - [`sink`]: ClickHouse rows of a batch, and abort records.
//! - [`lease`]: the partition lease in NATS KV: one writer, intents and commits, fencing.
//! - [`takeover`]: what an instance does when it takes a partition over.
//! - [`upgrade`]: copying the usage of the storage before migration 0024, once.
//! - [`dead_letter`]: dead-letter records.
//! - [`feed`]: a batch's notice for the live usage feed (partials and settled holds).
//! - [`crash`]: crash points the fault tests arm to kill the process between two commit steps.
//! - [`recovery`]: rebuilding the dedup set.
//! - [`seal`]: sealing the days that can no longer change.
//! - [`consumer`]: the consume-fold-flush-ack loop.
//! - [`metrics`]: every metric this crate emits.

pub mod batch;
pub mod classify;
pub mod committed;
pub mod config;
pub mod consumer;
pub mod crash;
pub mod dead_letter;
pub mod dedup;
pub mod feed;
pub mod idset;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod partials;
pub mod payload;
pub mod recovery;
pub mod seal;
pub mod sink;
pub mod takeover;
pub mod upgrade;

pub use config::AggregatorConfig;
pub use consumer::{run, RunError};
