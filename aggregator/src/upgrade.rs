//! The upgrade from the storage of migrations 0001-0023 (raw events in `usage_events`,
//! readings in `usage_readings`, commit markers in `usage_batches`, identity (customer, id)
//! folded at read time) to the storage of 0024: every committed legacy event is copied once
//! into `usage_raw`, `usage_meter_readings` and `usage_partials` under one batch id, folded
//! exactly as the old views folded it (each (customer, id, meter) once), so every event that
//! counted before counts the same after. Raw events are copied per (customer, agent, id),
//! so a re-send of a legacy event from any of the agents that sent it finds its id.
//!
//! Exactly once: the copy is a batch of partition 0 like any other, written between an
//! intent and a commit in the partition lease; a copy that stops half-way is aborted by
//! the next instance, which copies again under a new id. It is done when a row of consumer
//! [`UPGRADE_CONSUMER`] in `usage_batches` names a batch that is not aborted. Other
//! partitions wait for it before rebuilding their dedup sets (legacy ids must be in them).

use clickhouse::Client;

/// The batch log's `consumer` for the copy.
pub const UPGRADE_CONSUMER: &str = "upgrade:0024";

/// The copies, in order (each binds the batch id once).
const COPY: [&str; 3] = [
    "INSERT INTO usage_raw (customer, agent, event_id, event_type, time, time_ms, data, \
        payload_hash, stream_seq, received_at, batch_id, part) \
     SELECT customer, agent, event_id, any(event_type), any(time), any(time_ms), any(data), \
        any(payload_hash), any(stream_seq), any(received_at), ?, 0 \
     FROM usage_events WHERE batch_id IN (SELECT batch_id FROM usage_batches) \
     GROUP BY customer, agent, event_id",
    "INSERT INTO usage_meter_readings (customer, agent, event_id, meter, aggregation, \
        window_start, window_secs, time_ms, group_names, group_values, group_key, value, \
        unique_value, stream_seq, batch_id, part, inserted_at) \
     SELECT customer, any(agent), event_id, meter, any(aggregation), any(window_start), \
        any(window_secs), any(time_ms), any(group_names), any(group_values), any(group_key), \
        any(value), any(unique_value), 0, ?, 0, min(inserted_at) \
     FROM usage_readings WHERE batch_id IN (SELECT batch_id FROM usage_batches) \
     GROUP BY customer, event_id, meter",
    "INSERT INTO usage_partials (window_start, window_secs, customer, agent, meter, \
        aggregation, group_names, group_values, group_key, events, value_sum, value_min, \
        value_max, latest_value, latest_time_ms, latest_event_id, unique_values, batch_id, \
        part, inserted_at) \
     SELECT window_start, window_secs, customer, agent, meter, aggregation, group_names, \
        group_values, group_key, count(), sum(value), min(value), max(value), \
        argMax(value, (time_ms, event_id)), max(time_ms), argMax(event_id, (time_ms, event_id)), \
        groupUniqArrayIf(unique_value, aggregation = 'UNIQUE_COUNT'), ?, 0, now() \
     FROM ( \
        SELECT customer, event_id, meter, any(agent) AS agent, any(aggregation) AS aggregation, \
            any(window_start) AS window_start, any(window_secs) AS window_secs, \
            any(time_ms) AS time_ms, any(group_names) AS group_names, \
            any(group_values) AS group_values, any(group_key) AS group_key, \
            any(value) AS value, any(unique_value) AS unique_value \
        FROM usage_readings WHERE batch_id IN (SELECT batch_id FROM usage_batches) \
        GROUP BY customer, event_id, meter) \
     GROUP BY window_start, window_secs, customer, agent, meter, aggregation, group_names, \
        group_values, group_key",
];

/// What the upgrade has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing to copy, or copied already.
    Done,
    /// Legacy rows exist and are not copied yet.
    Pending,
}

/// Whether legacy rows wait to be copied.
pub async fn state(db: &Client) -> Result<State, clickhouse::error::Error> {
    let copied: u64 = db
        .query(
            "SELECT count() FROM usage_batches WHERE consumer = ? \
             AND batch_id NOT IN (SELECT batch_id FROM usage_aborts)",
        )
        .bind(UPGRADE_CONSUMER)
        .fetch_one()
        .await?;
    if copied > 0 {
        return Ok(State::Done);
    }
    let legacy: u64 = db
        .query("SELECT count() FROM usage_events")
        .fetch_one()
        .await?;
    Ok(if legacy > 0 {
        State::Pending
    } else {
        State::Done
    })
}

/// Copies every committed legacy event under `batch_id`, then logs the batch as the upgrade.
/// Run between the batch's intent and commit; on error the attempt must be aborted.
pub async fn copy(
    db: &Client,
    batch_id: &str,
    now_secs: u32,
) -> Result<(), clickhouse::error::Error> {
    for sql in COPY {
        db.query(sql)
            .bind(batch_id)
            .with_setting("max_bytes_before_external_group_by", "1000000000")
            .execute()
            .await?;
    }
    db.query(
        "INSERT INTO usage_batches (batch_id, consumer, first_seq, last_seq, events, rollups, committed_at) \
         SELECT ?, ?, 0, 0, toUInt32(count()), 0, toDateTime(?) FROM usage_raw WHERE batch_id = ?",
    )
    .bind(batch_id)
    .bind(UPGRADE_CONSUMER)
    .bind(now_secs)
    .bind(batch_id)
    .execute()
    .await
}
