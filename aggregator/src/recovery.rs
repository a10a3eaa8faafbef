//! Rebuilding the committed dedup set at start from ClickHouse: the (customer, id, payload
//! hash) of every raw event of a committed batch received within the horizon. Rows of
//! uncommitted batches are ignored, exactly as readers ignore them.

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

/// Loads every committed id received at or after `since_secs` into a fresh dedup set.
pub async fn load(db: &Client, since_secs: u32) -> Result<Dedup, clickhouse::error::Error> {
    let mut cursor = db
        .query(
            "SELECT customer, event_id, payload_hash, received_at FROM usage_events \
             WHERE received_at >= ? AND batch_id IN (SELECT batch_id FROM usage_batches)",
        )
        .bind(since_secs)
        .fetch::<SeenRow>()?;
    let mut dedup = Dedup::new();
    while let Some(row) = cursor.next().await? {
        dedup.insert_committed(
            event_key(&row.customer, &row.event_id),
            row.payload_hash,
            row.received_at,
        );
    }
    Ok(dedup)
}
