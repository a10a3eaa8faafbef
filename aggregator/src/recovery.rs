//! Rebuilding the committed dedup set from ClickHouse: the (customer, id, payload hash) of
//! every raw event of a committed batch that JetStream received within the horizon. Rows of
//! uncommitted batches are ignored, exactly as readers ignore them. With partitions, only
//! the customers of this instance's partition are kept, so each instance holds its share of
//! the ids, not all of them. Never writes anything.

use clickhouse::Client;
use serde::Deserialize;

use crate::dedup::{event_key, Dedup};

#[derive(clickhouse::Row, Deserialize)]
struct SeenRow {
    customer: String,
    event_id: String,
    payload_hash: u64,
    received_at: u32,
}

/// Which customers' ids an instance keeps.
pub type Mine<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// Loads every committed id of `mine` customers received at or after `since_secs` into a
/// fresh dedup set.
pub async fn load(
    db: &Client,
    since_secs: u32,
    mine: Mine<'_>,
) -> Result<Dedup, clickhouse::error::Error> {
    let mut dedup = Dedup::new();
    load_range(db, &mut dedup, since_secs, u32::MAX, mine).await?;
    Ok(dedup)
}

/// Adds every committed id of `mine` customers received in `[from_secs, until_secs)` to
/// `dedup`; returns how many were added.
pub async fn load_range(
    db: &Client,
    dedup: &mut Dedup,
    from_secs: u32,
    until_secs: u32,
    mine: Mine<'_>,
) -> Result<usize, clickhouse::error::Error> {
    let mut cursor = db
        .query(
            "SELECT customer, event_id, payload_hash, received_at FROM usage_events \
             WHERE received_at >= ? AND received_at < ? \
             AND batch_id IN (SELECT batch_id FROM usage_batches)",
        )
        .bind(from_secs)
        .bind(until_secs)
        .fetch::<SeenRow>()?;
    let mut rows = 0;
    while let Some(row) = cursor.next().await? {
        if !mine(&row.customer) {
            continue;
        }
        dedup.insert_committed(
            event_key(&row.customer, &row.event_id),
            row.payload_hash,
            row.received_at,
        );
        rows += 1;
    }
    Ok(rows)
}
