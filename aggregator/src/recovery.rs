//! Rebuilding the committed dedup set from ClickHouse: the identity (customer, source, id)
//! and payload hash of every raw event that counts (its batch is not aborted) and that
//! JetStream received within the horizon. With partitions, only the customers of this
//! instance's partition are kept, so each instance holds its share of the ids. Never writes
//! anything.
//!
//! The per-customer bounds (`limits.rs`) are rebuilt from the same reads: each identity
//! counts in the minute JetStream received it, and the series and distinct values of the
//! days an event may still be accepted for come from the partials that count, so a limit
//! judges a redelivered message as it was judged before a crash.
//!
//! The read is bounded by the table's sorting key, not by history: an accepted event was
//! received at most `allowed_lateness` after its time, and the configuration keeps the
//! horizon above the lateness, so every event received since `from` has an event time after
//! `from - horizon`.

use std::collections::HashMap;

use clickhouse::Client;
use serde::Deserialize;
use tally_domain::Meter;

use crate::dedup::{event_key, Dedup};
use crate::limits::{series_hash, value_hash, Limits};

#[derive(clickhouse::Row, Deserialize)]
struct SeenRow {
    customer: String,
    agent: String,
    event_id: String,
    payload_hash: u64,
    received_at: u32,
}

/// Which customers' ids an instance keeps.
pub type Mine<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// Loads every counted id of `mine` customers received at or after `since_secs` into a
/// fresh dedup set, counting each in `limits`.
pub async fn load(
    db: &Client,
    since_secs: u32,
    horizon_secs: u32,
    mine: Mine<'_>,
    limits: &mut Limits,
) -> Result<Dedup, clickhouse::error::Error> {
    let mut dedup = Dedup::new();
    load_range(
        db,
        &mut dedup,
        limits,
        since_secs,
        u32::MAX,
        horizon_secs,
        mine,
    )
    .await?;
    Ok(dedup)
}

/// Adds every counted id of `mine` customers received in `[from_secs, until_secs)` to
/// `dedup` (and counts it in `limits`); returns how many were added.
pub async fn load_range(
    db: &Client,
    dedup: &mut Dedup,
    limits: &mut Limits,
    from_secs: u32,
    until_secs: u32,
    horizon_secs: u32,
    mine: Mine<'_>,
) -> Result<usize, clickhouse::error::Error> {
    // event times of those ids start at from - horizon (module docs); the hour bound is the
    // sorting key's first column
    let time_from = from_secs.saturating_sub(horizon_secs);
    let mut cursor = db
        .query(
            "SELECT customer, agent, event_id, payload_hash, toUInt32(received_at) FROM usage_raw \
             WHERE toStartOfHour(time) >= toStartOfHour(toDateTime(?)) \
             AND received_at >= toDateTime(?) AND received_at < toDateTime(?) \
             AND batch_id NOT IN (SELECT batch_id FROM usage_aborts)",
        )
        .bind(time_from)
        .bind(from_secs)
        .bind(until_secs)
        .fetch::<SeenRow>()?;
    let mut rows = 0;
    while let Some(row) = cursor.next().await? {
        if !mine(&row.customer) {
            continue;
        }
        let new = dedup.insert_committed(
            event_key(&row.customer, &row.agent, &row.event_id),
            row.payload_hash,
            row.received_at,
        );
        if new {
            limits.count_committed(&row.customer, row.received_at);
        }
        rows += 1;
    }
    Ok(rows)
}

#[derive(clickhouse::Row, Deserialize)]
struct SeriesRow {
    customer: String,
    meter: String,
    day: u32,
    agent: String,
    group_values: Vec<String>,
}

#[derive(clickhouse::Row, Deserialize)]
struct ValueRow {
    customer: String,
    meter: String,
    day: u32,
    value: String,
}

/// The partials that count, of windows in days `[from_day, until_day)` (UTC days since the
/// epoch), bounded on the sorting key's first column.
const PARTIALS_OF_DAYS: &str = "FROM usage_partials \
     WHERE toStartOfHour(window_start) >= toDateTime(?) AND toStartOfHour(window_start) < toDateTime(?) \
     AND batch_id NOT IN (SELECT batch_id FROM usage_aborts)";

/// Adds to `limits` every committed series and UNIQUE_COUNT value of `mine` customers in days
/// `[from_day, until_day)`; returns how many rows were read. Meters no longer declared are
/// skipped (no event can be accepted for them).
pub async fn load_days(
    db: &Client,
    limits: &mut Limits,
    meters: &[Meter],
    from_day: u32,
    until_day: u32,
    mine: Mine<'_>,
) -> Result<usize, clickhouse::error::Error> {
    if from_day >= until_day {
        return Ok(0);
    }
    let index: HashMap<&str, usize> = meters
        .iter()
        .enumerate()
        .map(|(i, m)| (m.slug.as_str(), i))
        .collect();
    let (from, until) = (
        from_day.saturating_mul(86_400),
        until_day.saturating_mul(86_400),
    );
    let mut read = 0;
    let mut cursor = db
        .query(&format!(
            "SELECT customer, meter, toUInt32(intDiv(toUInt32(window_start), 86400)) AS day, agent, group_values \
             {PARTIALS_OF_DAYS} GROUP BY customer, meter, day, agent, group_values"
        ))
        .bind(from)
        .bind(until)
        .fetch::<SeriesRow>()?;
    while let Some(row) = cursor.next().await? {
        read += 1;
        let Some(&m) = index.get(row.meter.as_str()) else {
            continue;
        };
        if mine(&row.customer) {
            let series = series_hash(&row.agent, &row.group_values);
            limits.add_series(&row.customer, m, row.day, series);
        }
    }
    let mut cursor = db
        .query(&format!(
            "SELECT customer, meter, toUInt32(intDiv(toUInt32(window_start), 86400)) AS day, arrayJoin(unique_values) AS value \
             {PARTIALS_OF_DAYS} AND aggregation = 'UNIQUE_COUNT' GROUP BY customer, meter, day, value"
        ))
        .bind(from)
        .bind(until)
        .fetch::<ValueRow>()?;
    while let Some(row) = cursor.next().await? {
        read += 1;
        let Some(&m) = index.get(row.meter.as_str()) else {
            continue;
        };
        if mine(&row.customer) {
            limits.add_value(&row.customer, m, row.day, value_hash(&row.value));
        }
    }
    Ok(read)
}
