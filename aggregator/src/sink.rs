//! Writing a batch to ClickHouse: raw events, meter readings and window partials under the
//! batch's id (three concurrent inserts), a row in the batch log, and abort records.
//!
//! Rows of a batch count unless the batch id is in `usage_aborts`; the consumer writes them
//! only between the batch's intent and its commit in the partition lease (`lease.rs`), and
//! aborts an attempt that failed before retrying under a new id. This module never acks
//! anything, never touches the dedup set and never decides whether a batch counts.

use std::time::Instant;

use clickhouse::Client;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_domain::Meter;
use tally_platform::store::{datetime_secs, dec9};

use crate::batch::Batch;
use crate::metrics;
use crate::partials;

#[derive(clickhouse::Row, Serialize)]
struct RawRow<'a> {
    customer: &'a str,
    agent: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    time: u32,
    time_ms: i64,
    data: &'a str,
    payload_hash: u64,
    stream_seq: u64,
    received_at: u32,
    batch_id: &'a str,
    part: u32,
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
    group_key: &'a str,
    #[serde(with = "dec9")]
    value: Decimal,
    unique_value: &'a str,
    stream_seq: u64,
    batch_id: &'a str,
    part: u32,
    inserted_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct PartialRow<'a> {
    window_start: u32,
    window_secs: u32,
    customer: &'a str,
    agent: &'a str,
    meter: &'a str,
    aggregation: &'a str,
    group_names: &'a [String],
    group_values: &'a [String],
    group_key: &'a str,
    events: u64,
    #[serde(with = "dec9")]
    value_sum: Decimal,
    #[serde(with = "dec9")]
    value_min: Decimal,
    #[serde(with = "dec9")]
    value_max: Decimal,
    #[serde(with = "dec9")]
    latest_value: Decimal,
    latest_time_ms: i64,
    latest_event_id: &'a str,
    unique_values: Vec<&'a str>,
    batch_id: &'a str,
    part: u32,
    inserted_at: u32,
    bseq: u64,
}

/// The batch log (`usage_batches`): one row per attempt, for audit and the dashboards.
#[derive(clickhouse::Row, Serialize)]
struct LogRow<'a> {
    batch_id: &'a str,
    consumer: &'a str,
    first_seq: u64,
    last_seq: u64,
    events: u32,
    /// Readings written (the column keeps its old name).
    rollups: u32,
    committed_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct AbortRow<'a> {
    batch_id: &'a str,
    part: u32,
    reason: &'a str,
    aborted_at: u32,
}

/// Why writing failed; the attempt must be aborted and the batch retried under a new id.
#[derive(Debug, thiserror::Error)]
#[error("insert into {table}: {source}")]
pub struct InsertError {
    pub table: &'static str,
    pub source: clickhouse::error::Error,
}

/// Where a batch is written: its id, the writing instance's partition and consumer.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub batch_id: &'a str,
    /// The batch's sequence in its partition (the lease revision of its intent).
    pub bseq: u64,
    pub part: u32,
    pub consumer: &'a str,
    pub window_secs: u32,
    pub now_ms: i64,
}

/// The canonical text of a group (shared with the rater's corrections).
pub use tally_domain::meter::group_key;

fn insert_error(table: &'static str) -> impl Fn(clickhouse::error::Error) -> InsertError {
    move |source| InsertError { table, source }
}

/// The batch's raw events, one row each.
async fn insert_raw(db: &Client, batch: &Batch, t: Target<'_>) -> Result<(), InsertError> {
    let (table, started) = ("usage_raw", Instant::now());
    let mut ins = db
        .insert::<RawRow<'static>>(table)
        .await
        .map_err(insert_error(table))?;
    for a in &batch.events {
        let row = RawRow {
            customer: a.event.customer(),
            agent: a.event.agent(),
            event_id: a.event.id(),
            event_type: a.event.event_type(),
            time: datetime_secs(a.event.time_ms),
            time_ms: a.event.time_ms,
            data: a.event.data(),
            payload_hash: a.payload_hash,
            stream_seq: a.stream_seq,
            received_at: a.received_at,
            batch_id: t.batch_id,
            part: t.part,
        };
        ins.write(&row).await.map_err(insert_error(table))?;
    }
    ins.end().await.map_err(insert_error(table))?;
    metrics::insert_seconds(table, started.elapsed());
    Ok(())
}

/// The batch's meter readings, one row per (event, meter).
async fn insert_readings(
    db: &Client,
    batch: &Batch,
    meters: &Meters<'_>,
    t: Target<'_>,
) -> Result<(), InsertError> {
    let (table, started) = ("usage_meter_readings", Instant::now());
    let mut ins = db
        .insert::<ReadingRow<'static>>(table)
        .await
        .map_err(insert_error(table))?;
    for a in &batch.events {
        for (m, r) in &a.readings {
            let meter = &meters.list[*m];
            let key = group_key(&meters.group_names[*m], &r.group_values);
            let row = ReadingRow {
                customer: a.event.customer(),
                agent: a.event.agent(),
                event_id: a.event.id(),
                meter: meter.slug.as_str(),
                aggregation: meter.aggregation.as_str(),
                window_start: datetime_secs(a.window.start_ms),
                window_secs: t.window_secs,
                time_ms: a.event.time_ms,
                group_names: &meters.group_names[*m],
                group_values: &r.group_values,
                group_key: &key,
                value: r.value,
                unique_value: &r.unique_value,
                stream_seq: a.stream_seq,
                batch_id: t.batch_id,
                part: t.part,
                inserted_at: datetime_secs(t.now_ms),
            };
            ins.write(&row).await.map_err(insert_error(table))?;
        }
    }
    ins.end().await.map_err(insert_error(table))?;
    metrics::insert_seconds(table, started.elapsed());
    Ok(())
}

/// The batch's partials, one row per (customer, agent, meter, group, window).
async fn insert_partials(
    db: &Client,
    rows: &[partials::Partial<'_>],
    meters: &Meters<'_>,
    t: Target<'_>,
) -> Result<(), InsertError> {
    let (table, started) = ("usage_partials", Instant::now());
    let now = datetime_secs(t.now_ms);
    let mut ins = db
        .insert::<PartialRow<'static>>(table)
        .await
        .map_err(insert_error(table))?;
    for p in rows {
        let meter = &meters.list[p.meter];
        let key = group_key(&meters.group_names[p.meter], p.group_values);
        let row = PartialRow {
            window_start: datetime_secs(p.window_start_ms),
            window_secs: t.window_secs,
            customer: p.customer,
            agent: p.agent,
            meter: meter.slug.as_str(),
            aggregation: meter.aggregation.as_str(),
            group_names: &meters.group_names[p.meter],
            group_values: p.group_values,
            group_key: &key,
            events: p.events,
            value_sum: p.sum,
            value_min: p.min,
            value_max: p.max,
            latest_value: p.latest,
            latest_time_ms: p.latest_time_ms,
            latest_event_id: p.latest_event_id,
            unique_values: p.unique_values.iter().copied().collect(),
            batch_id: t.batch_id,
            part: t.part,
            inserted_at: now,
            bseq: t.bseq,
        };
        ins.write(&row).await.map_err(insert_error(table))?;
    }
    ins.end().await.map_err(insert_error(table))?;
    metrics::insert_seconds(table, started.elapsed());
    Ok(())
}

/// The meters and their group-by names, computed once per aggregator.
pub struct Meters<'a> {
    pub list: &'a [Meter],
    pub group_names: Vec<Vec<String>>,
}

impl<'a> Meters<'a> {
    pub fn new(list: &'a [Meter]) -> Meters<'a> {
        Meters {
            list,
            group_names: list.iter().map(Meter::group_names).collect(),
        }
    }
}

async fn insert_log(db: &Client, batch: &Batch, t: Target<'_>) -> Result<(), InsertError> {
    let table = "usage_batches";
    let row = LogRow {
        batch_id: t.batch_id,
        consumer: t.consumer,
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        events: u32::try_from(batch.events.len()).unwrap_or(u32::MAX),
        rollups: u32::try_from(batch.readings()).unwrap_or(u32::MAX),
        committed_at: datetime_secs(t.now_ms),
    };
    let mut ins = db
        .insert::<LogRow<'static>>(table)
        .await
        .map_err(insert_error(table))?;
    ins.write(&row).await.map_err(insert_error(table))?;
    ins.end().await.map_err(insert_error(table))
}

/// Writes the batch's raw events, readings and partials under `t.batch_id`, and its log row
/// (four concurrent inserts). `Ok` means every row is durable; on `Err` some may be, and the
/// attempt must be aborted. Returns the partials written (the live feed publishes them).
pub async fn write<'b>(
    db: &Client,
    batch: &'b Batch,
    meters: &Meters<'_>,
    t: Target<'_>,
) -> Result<Vec<partials::Partial<'b>>, InsertError> {
    let rows = partials::fold(&batch.events, meters.list);
    futures::future::try_join4(
        insert_raw(db, batch, t),
        insert_readings(db, batch, meters, t),
        insert_partials(db, &rows, meters, t),
        insert_log(db, batch, t),
    )
    .await?;
    Ok(rows)
}

/// Records `ids` (batches or seals of partition `part`) as aborted: their rows never count.
pub async fn abort(
    db: &Client,
    ids: &[String],
    part: u32,
    reason: &str,
    now_ms: i64,
) -> Result<(), InsertError> {
    if ids.is_empty() {
        return Ok(());
    }
    let table = "usage_aborts";
    let mut ins = db
        .insert::<AbortRow<'static>>(table)
        .await
        .map_err(insert_error(table))?;
    for id in ids {
        let row = AbortRow {
            batch_id: id,
            part,
            reason,
            aborted_at: datetime_secs(now_ms),
        };
        ins.write(&row).await.map_err(insert_error(table))?;
    }
    ins.end().await.map_err(insert_error(table))?;
    metrics::aborted(ids.len());
    Ok(())
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
