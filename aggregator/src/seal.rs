//! Sealing: once a tumbling window can no longer change, its usage is written into
//! `usage_rollups` (one row per customer, agent, meter, window and group, `sealed = 1`) under
//! a fresh batch id, then a marker in `usage_batches`: the window's final record (migration
//! 0022). A window is (customer, window start, window size). Billing never depends on it:
//! `v_usage` keeps folding the committed readings (one read of the markers per query, and an
//! event accepted into a sealed window, which only a configuration change or a JetStream clock
//! step could allow, still counts).
//!
//! When a window is final: an event is accepted only if JetStream received it at most the
//! allowed lateness after its time, so every event of a window ending at `end` was received
//! by `end + lateness`. Messages are acknowledged only after they are committed, and JetStream
//! received them in stream order. So once the oldest message not yet acknowledged (by any
//! consumer of the stream, and every aggregator's consumer exists) was received after
//! `end + lateness`, every event of the window is committed. [`final_until`] finds that
//! bound; with nothing unacknowledged it is the time the newest message in the stream was
//! received (any later message is received after it, as long as the stream leader's clock
//! does not step back).
//!
//! A seal that stops half-way (a crash, a refused insert) has no marker and is not part of the
//! record; the next pass seals the same windows under a new id. Two sealers racing write the
//! same numbers; the record is the seal with the smallest batch id. This module never seals a
//! window that can still change under the configured lateness, and never edits a row.

use std::time::Duration;

use futures::TryStreamExt;

use async_nats::jetstream;
use clickhouse::Client;
use tally_platform::shutdown::Shutdown;
use tally_platform::store::datetime_secs;

use crate::consumer::ms_from_nanos;
use crate::{metrics, sink};

/// The INSERT that writes the rollups (shared with the SQL compatibility tests, which run it
/// on ClickHouse 18.16 and a current release).
pub const SEAL_ROLLUPS_SQL: &str = include_str!("../sql/seal_rollups.sql");

/// Why a sealing pass did not finish (the next pass tries again).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("reading consumer {consumer} of stream {stream}: {detail}")]
    Consumer {
        stream: String,
        consumer: String,
        detail: String,
    },
    #[error("sealing in ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("writing the seal marker: {0}")]
    Marker(#[from] sink::CommitError),
}

/// Where the sealer looks and what it may seal.
#[derive(Debug, Clone)]
pub struct SealConfig {
    /// The usage stream.
    pub stream: String,
    /// The consumers that must exist before anything is sealed: the aggregators' (one per
    /// partition). Every other consumer on the stream counts too once it exists.
    pub consumers: Vec<String>,
    /// `aggregator.allowed_lateness_secs`.
    pub lateness_secs: u64,
    /// The marker's `consumer` column: `sealer:<consumer>`.
    pub label: String,
}

/// The time (ms) before which JetStream received every message not yet acknowledged by any
/// consumer of the stream, and after which it receives every message still to come: every
/// window whose end plus the lateness lies before it is final. Every consumer on the stream
/// counts (the aggregators' and any other: a lagging one only delays sealing), and each of
/// `required` must exist. `None` while the stream is empty or a required consumer does not
/// exist yet (nothing can be known about the messages it will take).
pub async fn final_until(
    js: &jetstream::Context,
    stream_name: &str,
    required: &[String],
) -> Result<Option<i64>, SealError> {
    let err = |consumer: &str, detail: &dyn std::fmt::Display| SealError::Consumer {
        stream: stream_name.to_owned(),
        consumer: consumer.to_owned(),
        detail: detail.to_string(),
    };
    let mut stream = js.get_stream(stream_name).await.map_err(|e| err("-", &e))?;
    let state = &stream.info().await.map_err(|e| err("-", &e))?.state;
    if state.messages == 0 {
        return Ok(None);
    }
    let first_seq = state.first_sequence;
    // received by the server clock: every message still to come is received after it
    let mut bound = ms_from_nanos(state.last_timestamp.unix_timestamp_nanos());
    let names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| err("-", &e))?;
    if required.iter().any(|r| !names.contains(r)) {
        return Ok(None);
    }
    for name in &names {
        let info = stream
            .consumer_info(name)
            .await
            .map_err(|e| err(name, &e))?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            continue;
        }
        // the first message above the ack floor: not acknowledged, or (with a filter) another
        // partition's message received no later than this consumer's first unacknowledged one
        let seq = (info.ack_floor.stream_sequence + 1).max(first_seq);
        let msg = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| err(name, &e))?;
        bound = bound.min(ms_from_nanos(msg.time.unix_timestamp_nanos()));
    }
    Ok(Some(bound))
}

/// Writes the rollup rows of every committed, not yet sealed window ending at or before
/// `until_secs`, under `batch_id` (no marker: they count nowhere yet); returns how many.
pub async fn write_rollups(
    db: &Client,
    batch_id: &str,
    until_secs: u32,
) -> Result<u64, clickhouse::error::Error> {
    db.query(SEAL_ROLLUPS_SQL)
        .bind(batch_id)
        .bind(until_secs)
        .execute()
        .await?;
    db.query("SELECT count() FROM usage_rollups WHERE batch_id = ?")
        .bind(batch_id)
        .fetch_one::<u64>()
        .await
}

/// Seals every committed window ending at or before `until_secs` that is not sealed yet;
/// returns the rollup rows written (0: nothing to seal, no marker).
pub async fn seal(
    db: &Client,
    label: &str,
    until_secs: u32,
    now_ms: i64,
) -> Result<u64, SealError> {
    let batch_id = uuid::Uuid::new_v4().to_string();
    let rows = write_rollups(db, &batch_id, until_secs).await?;
    if rows > 0 {
        sink::mark_seal(db, &batch_id, label, rows, now_ms).await?;
    }
    Ok(rows)
}

/// Whether any reading lies in a window ending in `(after_secs, until_secs]` (windows are at
/// most a day long): a cheap look at one column, so a pass with nothing newly final skips
/// folding the readings.
async fn newly_final(
    db: &Client,
    after_secs: u32,
    until_secs: u32,
) -> Result<bool, clickhouse::error::Error> {
    let n: u64 = db
        .query(
            "SELECT count() FROM usage_readings \
             WHERE window_start < toDateTime(?) AND window_start >= toDateTime(?)",
        )
        .bind(until_secs)
        .bind(after_secs.saturating_sub(86_400))
        .fetch_one()
        .await?;
    Ok(n > 0)
}

/// What a pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Rollup rows written.
    pub rows: u64,
    /// Windows ending at or before this (seconds) are sealed, if they have usage.
    pub until: u32,
}

/// One pass: finds how far windows are final and seals them. Windows ending at or before
/// `after_secs` were sealed by an earlier pass (0 at start: all of history is looked at).
pub async fn pass(
    db: &Client,
    js: &jetstream::Context,
    cfg: &SealConfig,
    after_secs: u32,
    now_ms: i64,
) -> Result<Sealed, SealError> {
    let nothing = Sealed {
        rows: 0,
        until: after_secs,
    };
    let Some(received_before) = final_until(js, &cfg.stream, &cfg.consumers).await? else {
        return Ok(nothing);
    };
    let lateness_ms = i64::try_from(cfg.lateness_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    // a window is final when its end plus the lateness is before every unacknowledged
    // message's receipt: end < received_before - lateness (one second less for DateTime's
    // whole seconds)
    let until = datetime_secs(
        received_before
            .saturating_sub(lateness_ms)
            .saturating_sub(1000),
    );
    if until <= after_secs || !newly_final(db, after_secs, until).await? {
        return Ok(Sealed {
            rows: 0,
            until: until.max(after_secs),
        });
    }
    let rows = seal(db, &cfg.label, until, now_ms).await?;
    metrics::sealed(rows);
    Ok(Sealed { rows, until })
}

/// Runs a pass every `every` until `shutdown`; a failed pass is logged and retried at the
/// next one. Stopping mid-pass leaves an unmarked seal, which counts nowhere.
pub async fn run(
    db: Client,
    js: jetstream::Context,
    cfg: SealConfig,
    every: Duration,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sealed_until = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = crate::consumer::now_ms();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = pass(&db, &js, &cfg, sealed_until, now_ms) => match result {
                Ok(done) => {
                    if done.rows > 0 {
                        tracing::info!(rows = done.rows, until = done.until, "windows sealed");
                    }
                    sealed_until = done.until;
                }
                Err(e) => tracing::warn!(error = %e, "sealing pass failed; retrying at the next"),
            }
        }
    }
}
