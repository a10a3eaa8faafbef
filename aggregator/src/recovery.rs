//! Rebuilding the committed dedup set from ClickHouse: the identity (customer, source, id)
//! and payload hash of every raw event that counts (its batch is not aborted) and that
//! JetStream received within the horizon. With partitions, only the customers of this
//! instance's partition are kept, so each instance holds its share of the ids. Never writes
//! anything.
//!
//! The read is bounded by the table's sorting key, not by history: an accepted event was
//! received at most `allowed_lateness` after its time, and the configuration keeps the
//! horizon above the lateness, so every event received since `from` has an event time after
//! `from - horizon`.

use clickhouse::Client;
use serde::Deserialize;

use crate::dedup::{event_key, Dedup};

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
/// fresh dedup set.
pub async fn load(
    db: &Client,
    since_secs: u32,
    horizon_secs: u32,
    mine: Mine<'_>,
) -> Result<Dedup, clickhouse::error::Error> {
    let mut dedup = Dedup::new();
    load_range(db, &mut dedup, since_secs, u32::MAX, horizon_secs, mine).await?;
    Ok(dedup)
}

/// Adds every counted id of `mine` customers received in `[from_secs, until_secs)` to
/// `dedup`; returns how many were added.
pub async fn load_range(
    db: &Client,
    dedup: &mut Dedup,
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
        dedup.insert_committed(
            event_key(&row.customer, &row.agent, &row.event_id),
            row.payload_hash,
            row.received_at,
        );
        rows += 1;
    }
    Ok(rows)
}
