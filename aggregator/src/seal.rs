//! Sealing days: once a UTC day can no longer change for a partition, its usage is folded
//! into `usage_days` (one row per customer, agent, meter and group) under a seal id, then a
//! row in `usage_seals` makes the seal count. Billing reads a sealed day from those rows and
//! the rest from the partials, so a long period costs a row per day, not per window or batch.
//!
//! When a day is final: an event is accepted only if JetStream received it at most the
//! allowed lateness after its time, so every event of a day ending at `end` was received by
//! `end + lateness`. This instance acknowledges messages only after their batch is
//! committed, and JetStream receives messages in stream order. So once the first message its
//! consumer has not acknowledged was received after `end + lateness` (or, with nothing
//! unacknowledged, the stream's newest message was), every event of the day is committed.
//! [`final_until`] finds that bound.
//!
//! A day stays final even if the lateness is raised later: the consumer refuses events for a
//! sealed day (`window_sealed`), and it seals only between two batches, so no batch in flight
//! can add to a day while it is sealed. Days are sealed in order, each day once: the seal is
//! written under the partition lease (intent, rows, seal row, commit), so a seal that stops
//! half-way is aborted by whoever finds it, and a fenced instance cannot seal. Empty days are
//! sealed too (a seal row with no day rows), so a partition's sealed days are exactly the days
//! up to its newest seal. This module never edits a row.

use async_nats::jetstream;
use clickhouse::Client;

use crate::consumer::ms_from_nanos;

/// The INSERT that folds one day (shared with the SQL compatibility tests, which run it on
/// ClickHouse 18.16 and a current release).
pub const SEAL_DAY_SQL: &str = include_str!("../sql/seal_day.sql");

const DAY_SECS: u32 = 86_400;

/// Why a look for final days did not finish (the next look tries again).
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
}

/// The time (ms) before which JetStream received every message `consumer` has not yet
/// acknowledged, and after which it receives every message still to come. `None` while the
/// stream is empty.
pub async fn final_until(
    js: &jetstream::Context,
    stream_name: &str,
    consumer: &str,
) -> Result<Option<i64>, SealError> {
    let err = |detail: &dyn std::fmt::Display| SealError::Consumer {
        stream: stream_name.to_owned(),
        consumer: consumer.to_owned(),
        detail: detail.to_string(),
    };
    let mut stream = js.get_stream(stream_name).await.map_err(|e| err(&e))?;
    let state = stream.info().await.map_err(|e| err(&e))?.state.clone();
    if state.messages == 0 {
        return Ok(None);
    }
    // received by the server clock: every message still to come is received after it
    let newest = ms_from_nanos(state.last_timestamp.unix_timestamp_nanos());
    let info = stream.consumer_info(consumer).await.map_err(|e| err(&e))?;
    if info.num_pending == 0 && info.num_ack_pending == 0 {
        return Ok(Some(newest));
    }
    // the first message above the ack floor: not acknowledged, or (with a filter) another
    // partition's message received no later than this consumer's first unacknowledged one
    let seq = (info.ack_floor.stream_sequence + 1).max(state.first_sequence);
    let msg = stream.get_raw_message(seq).await.map_err(|e| err(&e))?;
    Ok(Some(
        newest.min(ms_from_nanos(msg.time.unix_timestamp_nanos())),
    ))
}

/// The start (Unix seconds) of the UTC day containing `secs`.
pub fn day_start(secs: u32) -> u32 {
    secs - secs % DAY_SECS
}

/// The last day (its start) that is final when everything received before `until_ms` is
/// committed and events may be `lateness_secs` late: its end plus the lateness is at or
/// before `until_ms` (one second less, for DateTime's whole seconds). `None` if none is.
pub fn last_final_day(until_ms: i64, lateness_secs: u64) -> Option<u32> {
    let lateness_ms = i64::try_from(lateness_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let bound = until_ms.checked_sub(lateness_ms)?.checked_sub(1000)?;
    let secs = u32::try_from(bound.div_euclid(1000)).ok()?;
    // the newest day whose end is at or before `secs`
    secs.checked_sub(DAY_SECS).map(day_start)
}

/// The days to seal now, in order: from the day after `sealed_through` (or `first_data`'s
/// day when nothing was sealed yet) through `last_final`, at most `max_days`.
pub fn days_to_seal(
    sealed_through: Option<u32>,
    first_data: Option<u32>,
    last_final: Option<u32>,
    max_days: u32,
) -> Vec<u32> {
    let (Some(last), Some(first)) = (
        last_final,
        sealed_through
            .map(|d| d + DAY_SECS)
            .or(first_data.map(day_start)),
    ) else {
        return Vec::new();
    };
    (0..max_days)
        .map(|i| first + i * DAY_SECS)
        .take_while(|d| *d <= last)
        .collect()
}

/// The newest sealed day of partition `part` (its start), if any.
pub async fn sealed_through(
    db: &Client,
    part: u32,
) -> Result<Option<u32>, clickhouse::error::Error> {
    let (n, day): (u64, u32) = db
        .query(
            "SELECT count(), toUInt32(toUInt32(max(day)) * 86400) FROM usage_seals \
             WHERE part = ? AND day > toDate(0) \
             AND seal_id NOT IN (SELECT batch_id FROM usage_aborts)",
        )
        .bind(part)
        .fetch_one()
        .await?;
    Ok((n > 0).then_some(day))
}

/// Registers partition `part` in `usage_seals` (a row for day 0, written once), so readers
/// know the partition exists before it seals anything: they read all its time from the
/// partials.
pub async fn register(db: &Client, part: u32, now_ms: i64) -> Result<(), clickhouse::error::Error> {
    let n: u64 = db
        .query("SELECT count() FROM usage_seals WHERE part = ? AND day = toDate(0)")
        .bind(part)
        .fetch_one()
        .await?;
    if n > 0 {
        return Ok(());
    }
    db.query(
        "INSERT INTO usage_seals (part, day, seal_id, rows, sealed_at) \
         VALUES (?, toDate(0), ?, 0, toDateTime(?))",
    )
    .bind(part)
    .bind(format!("register:{part}"))
    .bind(tally_platform::store::datetime_secs(now_ms))
    .execute()
    .await
}

/// The first counted partial of partition `part` (Unix seconds of its window), if any: where
/// sealing starts when nothing was sealed yet. Read once per takeover.
pub async fn first_data(db: &Client, part: u32) -> Result<Option<u32>, clickhouse::error::Error> {
    let (n, first): (u64, u32) = db
        .query(
            "SELECT count(), toUInt32(min(window_start)) FROM usage_partials \
             WHERE part = ? AND batch_id NOT IN (SELECT batch_id FROM usage_aborts)",
        )
        .bind(part)
        .fetch_one()
        .await?;
    Ok((n > 0).then_some(first))
}

/// Folds day `day` (its start) of partition `part` into `usage_days` under `seal_id`, then
/// writes the seal row; returns the day rows written. Run between the seal's intent and its
/// commit in the lease; a failure leaves rows of a seal that must be aborted.
pub async fn seal_day(
    db: &Client,
    seal_id: &str,
    part: u32,
    day: u32,
    now_ms: i64,
) -> Result<u64, clickhouse::error::Error> {
    let end = day + DAY_SECS;
    db.query(SEAL_DAY_SQL)
        .bind(seal_id)
        .bind(part)
        .bind(day)
        .bind(day)
        .bind(end)
        .bind(end)
        .execute()
        .await?;
    let rows: u64 = db
        .query(
            "SELECT count() FROM usage_days WHERE day = toDate(intDiv(?, 86400)) AND seal_id = ?",
        )
        .bind(day)
        .bind(seal_id)
        .fetch_one()
        .await?;
    let now = tally_platform::store::datetime_secs(now_ms);
    db.query(
        "INSERT INTO usage_seals (part, day, seal_id, rows, sealed_at) \
         VALUES (?, toDate(intDiv(?, 86400)), ?, ?, toDateTime(?))",
    )
    .bind(part)
    .bind(day)
    .bind(seal_id)
    .bind(rows)
    .bind(now)
    .execute()
    .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: u32 = 1_795_651_200; // 2026-11-26T00:00:00Z

    #[test]
    fn a_day_is_final_once_its_end_plus_the_lateness_is_received() {
        let ms = |secs: u32| i64::from(secs) * 1000;
        // everything before D+1d+1h+1s committed, lateness 1 h: day D is final
        assert_eq!(last_final_day(ms(D + DAY_SECS + 3601), 3600), Some(D));
        // a second less: not yet
        assert_eq!(
            last_final_day(ms(D + DAY_SECS + 3600), 3600),
            Some(D - DAY_SECS)
        );
        assert_eq!(last_final_day(0, 3600), None);
    }

    #[test]
    fn days_are_sealed_in_order_from_the_first_unsealed() {
        assert_eq!(
            days_to_seal(Some(D), None, Some(D + 3 * DAY_SECS), 10),
            vec![D + DAY_SECS, D + 2 * DAY_SECS, D + 3 * DAY_SECS]
        );
        assert_eq!(
            days_to_seal(None, Some(D + 5000), Some(D + 3 * DAY_SECS), 2),
            vec![D, D + DAY_SECS]
        );
        assert!(days_to_seal(Some(D), None, Some(D), 10).is_empty());
        assert!(days_to_seal(None, None, Some(D), 10).is_empty());
        assert!(days_to_seal(Some(D), None, None, 10).is_empty());
    }
}
