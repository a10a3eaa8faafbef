//! Committing a batch to ClickHouse: raw events and meter readings (concurrently), then the
//! commit marker.
//!
//! Rows are written under a fresh `batch_id` per attempt and count only once the marker row
//! exists (see the crate docs). This module never acks anything and never touches the dedup
//! set; the consumer does both after [`commit`] returns `Ok`.

use std::collections::BTreeMap;
use std::time::Instant;

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_domain::Meter;
use tally_platform::store::{datetime_secs, dec9};

use crate::batch::Batch;
use crate::crash::{self, CrashPoint};
use crate::metrics;

#[derive(clickhouse::Row, Serialize)]
struct EventRow<'a> {
    customer: &'a str,
    agent: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    time: u32,
    time_ms: i64,
    data: &'a str,
    payload_hash: u64,
    batch_id: &'a str,
    stream_seq: u64,
    received_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct ReadingRow<'a> {
    customer: &'a str,
    agent: &'a str,
    event_id: &'a str,
    meter: &'a str,
    aggregation: &'a str,
    window_start: u32,
    window_secs: u32,
    time_ms: i64,
    group_names: &'a [String],
    group_values: &'a [String],
    group_key: String,
    #[serde(with = "dec9")]
    value: Decimal,
    unique_value: &'a str,
    batch_id: &'a str,
    inserted_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct MarkerRow<'a> {
    batch_id: &'a str,
    consumer: &'a str,
    first_seq: u64,
    last_seq: u64,
    events: u32,
    /// Readings written (the column predates readings and keeps its name).
    rollups: u32,
    committed_at: u32,
}

/// Why a commit attempt failed; the batch is safe to retry under a new id.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("insert into {table}: {source}")]
    Insert {
        table: &'static str,
        source: clickhouse::error::Error,
    },
    #[error("marker for batch {batch_id} in doubt: {source}")]
    InDoubt {
        batch_id: String,
        source: clickhouse::error::Error,
    },
}

/// The canonical text of a group: a JSON object of name to value, names sorted.
pub fn group_key(names: &[String], values: &[String]) -> String {
    let map: BTreeMap<&str, &str> = names
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect();
    serde_json::to_string(&map).unwrap_or_default()
}

async fn insert_rows<'r, T: clickhouse::RowWrite>(
    db: &Client,
    table: &'static str,
    rows: Vec<T::Value<'r>>,
) -> Result<(), CommitError> {
    let started = Instant::now();
    let mut insert = open::<T>(db, table).await?;
    for row in rows {
        insert.write(&row).await.map_err(insert_error(table))?;
    }
    finish(insert, table, started).await
}

fn insert_error(table: &'static str) -> impl Fn(clickhouse::error::Error) -> CommitError {
    move |source| CommitError::Insert { table, source }
}

async fn open<T: clickhouse::Row>(
    db: &Client,
    table: &'static str,
) -> Result<clickhouse::insert::Insert<T>, CommitError> {
    db.insert::<T>(table).await.map_err(insert_error(table))
}

async fn finish<T>(
    insert: clickhouse::insert::Insert<T>,
    table: &'static str,
    started: Instant,
) -> Result<(), CommitError> {
    insert.end().await.map_err(insert_error(table))?;
    metrics::insert_seconds(table, started.elapsed());
    Ok(())
}

/// The batch's raw events, one row each, written as they are built (a batch's rows are never
/// collected into a vector of their own: megabytes per flush at the default batch size).
async fn insert_events(db: &Client, batch: &Batch, batch_id: &str) -> Result<(), CommitError> {
    let (table, started) = ("usage_events", Instant::now());
    let mut insert = open::<EventRow<'static>>(db, table).await?;
    for a in &batch.events {
        let row = EventRow {
            customer: a.event.customer(),
            agent: a.event.agent(),
            event_id: a.event.id(),
            event_type: a.event.event_type(),
            time: datetime_secs(a.event.time_ms),
            time_ms: a.event.time_ms,
            data: a.event.data(),
            payload_hash: a.payload_hash,
            batch_id,
            stream_seq: a.stream_seq,
            received_at: a.received_at,
        };
        insert.write(&row).await.map_err(insert_error(table))?;
    }
    finish(insert, table, started).await
}

/// The batch's meter readings, one row per (event, meter), written as they are built.
async fn insert_readings(
    db: &Client,
    batch: &Batch,
    meters: &[Meter],
    batch_id: &str,
    window_secs: u32,
    now: u32,
) -> Result<(), CommitError> {
    let (table, started) = ("usage_readings", Instant::now());
    let group_names: Vec<Vec<String>> = meters.iter().map(Meter::group_names).collect();
    let mut insert = open::<ReadingRow<'static>>(db, table).await?;
    for a in &batch.events {
        for (m, r) in &a.readings {
            let meter = &meters[*m];
            let row = ReadingRow {
                customer: a.event.customer(),
                agent: a.event.agent(),
                event_id: a.event.id(),
                meter: meter.slug.as_str(),
                aggregation: meter.aggregation.as_str(),
                window_start: datetime_secs(a.window.start_ms),
                window_secs,
                time_ms: a.event.time_ms,
                group_names: &group_names[*m],
                group_values: &r.group_values,
                group_key: group_key(&group_names[*m], &r.group_values),
                value: r.value,
                unique_value: &r.unique_value,
                batch_id,
                inserted_at: now,
            };
            insert.write(&row).await.map_err(insert_error(table))?;
        }
    }
    finish(insert, table, started).await
}

/// Writes the batch's events and readings under `batch_id` (two concurrent inserts), without a
/// marker, so they do not count yet; returns the number of readings. [`commit`] calls it before writing the marker;
/// the insert benchmark uses it as the plain-insert baseline.
pub async fn write_rows(
    db: &Client,
    batch: &Batch,
    meters: &[Meter],
    batch_id: &str,
    window_secs: u32,
    now_ms: i64,
) -> Result<usize, CommitError> {
    let now = datetime_secs(now_ms);
    // both inserts at once: the marker waits for both, so a failure of either (even after the
    // other succeeded) leaves rows that never count, exactly as when they ran one by one
    futures::future::try_join(
        insert_events(db, batch, batch_id),
        insert_readings(db, batch, meters, batch_id, window_secs, now),
    )
    .await?;
    let reading_count = batch.readings();
    Ok(reading_count)
}

/// Writes the batch's events and readings under `batch_id`, then its marker. `Ok` means the
/// batch is durably committed and visible.
pub async fn commit(
    db: &Client,
    batch: &Batch,
    meters: &[Meter],
    batch_id: &str,
    consumer: &str,
    window_secs: u32,
    now_ms: i64,
) -> Result<(), CommitError> {
    let reading_count = write_rows(db, batch, meters, batch_id, window_secs, now_ms).await?;
    crash::point(CrashPoint::AfterRows);
    let now = datetime_secs(now_ms);
    let marker = MarkerRow {
        batch_id,
        consumer,
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        events: u32::try_from(batch.events.len()).unwrap_or(u32::MAX),
        rollups: u32::try_from(reading_count).unwrap_or(u32::MAX),
        committed_at: now,
    };
    match insert_rows::<MarkerRow<'static>>(db, "usage_batches", vec![marker]).await {
        Ok(()) => Ok(()),
        Err(e) => match marker_exists(db, batch_id).await {
            Ok(true) => {
                tracing::warn!(batch_id, error = %e, "marker insert reported an error but the marker is durable");
                Ok(())
            }
            Ok(false) => Err(e),
            Err(source) => Err(CommitError::InDoubt {
                batch_id: batch_id.to_owned(),
                source,
            }),
        },
    }
}

/// Writes the marker of a seal (`seal.rs`): `rollups` rows written under `batch_id` by
/// `consumer`, counted from now on.
pub async fn mark_seal(
    db: &Client,
    batch_id: &str,
    consumer: &str,
    rollups: u64,
    now_ms: i64,
) -> Result<(), CommitError> {
    let marker = MarkerRow {
        batch_id,
        consumer,
        first_seq: 0,
        last_seq: 0,
        events: 0,
        rollups: u32::try_from(rollups).unwrap_or(u32::MAX),
        committed_at: datetime_secs(now_ms),
    };
    insert_rows::<MarkerRow<'static>>(db, "usage_batches", vec![marker]).await
}

/// Whether the marker of `batch_id` is durable.
pub async fn marker_exists(db: &Client, batch_id: &str) -> Result<bool, clickhouse::error::Error> {
    let n: u64 = db
        .query("SELECT count() FROM usage_batches WHERE batch_id = ?")
        .bind(batch_id)
        .fetch_one()
        .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_are_canonical_json() {
        let names = vec!["kind".to_owned(), "model".to_owned()];
        let values = vec!["output".to_owned(), "gpt-4o".to_owned()];
        assert_eq!(
            group_key(&names, &values),
            r#"{"kind":"output","model":"gpt-4o"}"#
        );
        assert_eq!(group_key(&[], &[]), "{}");
    }
}
