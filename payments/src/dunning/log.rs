//! The notifications decided and the delivery log, in ClickHouse (append-only).
//! It never updates or deletes a row.

use std::collections::HashMap;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_platform::store::datetime_secs;

/// One notification, with the exact body every attempt sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct Notification {
    pub notification_id: String,
    pub customer: String,
    pub invoice_id: String,
    pub kind: String,
    pub step: u32,
    pub url: String,
    pub body: String,
    pub actor: String,
    pub created_at_ms: i64,
    pub created_at: u32,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct Delivery {
    pub notification_id: String,
    pub attempt: u32,
    pub url: String,
    pub status_code: u16,
    pub delivered: u8,
    pub error: String,
    pub at_ms: i64,
    pub at: u32,
}

impl Delivery {
    pub fn new(
        notification_id: &str,
        attempt: u32,
        url: &str,
        a: &super::deliver::Attempt,
        at_ms: i64,
    ) -> Delivery {
        Delivery {
            notification_id: notification_id.to_owned(),
            attempt,
            url: url.to_owned(),
            status_code: a.status_code,
            delivered: u8::from(a.delivered),
            error: a.error.clone(),
            at_ms,
            at: datetime_secs(at_ms),
        }
    }
}

pub async fn append_notification(
    db: &Client,
    n: &Notification,
) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<Notification>("notifications").await?;
    insert.write(n).await?;
    insert.end().await
}

pub async fn append_delivery(db: &Client, d: &Delivery) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<Delivery>("notification_deliveries").await?;
    insert.write(d).await?;
    insert.end().await
}

/// Ids of every notification decided.
pub async fn notification_ids(
    db: &Client,
) -> Result<std::collections::HashSet<String>, clickhouse::error::Error> {
    let ids: Vec<String> = db
        .query("SELECT DISTINCT notification_id FROM notifications")
        .fetch_all()
        .await?;
    Ok(ids.into_iter().collect())
}

/// Notifications of the `kinds` given with no successful delivery yet (first record of each
/// id). Each kind has one deliverer: dunning's pass delivers its own kinds, the spend alerts
/// theirs ([`crate::spend_alerts`]), so no notification is attempted by both at once.
pub async fn undelivered(
    db: &Client,
    kinds: &[&str],
) -> Result<Vec<Notification>, clickhouse::error::Error> {
    db.query(
        "SELECT notification_id, any(customer), any(invoice_id), any(kind), any(step), any(url), \
         any(body), any(actor), min(created_at_ms), toUInt32(min(created_at)) FROM notifications \
         WHERE has(?, kind) AND notification_id NOT IN \
           (SELECT notification_id FROM notification_deliveries WHERE delivered = 1) \
         GROUP BY notification_id ORDER BY notification_id",
    )
    .bind(kinds)
    .fetch_all()
    .await
}

/// Whether notification `notification_id` of `customer` was decided (appended) already.
pub async fn is_decided(
    db: &Client,
    customer: &str,
    notification_id: &str,
) -> Result<bool, clickhouse::error::Error> {
    let n: u64 = db
        .query("SELECT count() FROM notifications WHERE customer = ? AND notification_id = ?")
        .bind(customer)
        .bind(notification_id)
        .fetch_one()
        .await?;
    Ok(n > 0)
}

#[derive(clickhouse::Row, Deserialize)]
struct AttemptsRow {
    notification_id: String,
    n: u64,
    last: i64,
}

/// Per notification: attempts made and when the last one started.
pub async fn attempts(
    db: &Client,
) -> Result<HashMap<String, (u32, i64)>, clickhouse::error::Error> {
    let rows: Vec<AttemptsRow> = db
        .query(
            "SELECT notification_id, count() AS n, max(at_ms) AS last \
             FROM notification_deliveries GROUP BY notification_id",
        )
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.notification_id,
                (u32::try_from(r.n).unwrap_or(u32::MAX), r.last),
            )
        })
        .collect())
}

/// The delivery log of a customer's notifications, oldest first.
pub async fn deliveries_of(
    db: &Client,
    customer: &str,
) -> Result<Vec<Delivery>, clickhouse::error::Error> {
    db.query(
        "SELECT notification_id, attempt, url, status_code, delivered, error, at_ms, toUInt32(at) \
         FROM notification_deliveries WHERE notification_id IN \
           (SELECT notification_id FROM notifications WHERE customer = ?) \
         ORDER BY at_ms, notification_id, attempt",
    )
    .bind(customer)
    .fetch_all()
    .await
}
