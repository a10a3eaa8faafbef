//! Who changed what through the APIs (`api_audit`, migration 0040): for every authenticated
//! request that may change state, one row when it arrives (`status` 0) and one with the status
//! it was answered with, both naming the service, the actor, its role and token id, the
//! method and the path. The first row is written before the change is made, so a change whose
//! actor was not recorded cannot happen ([`super::hook::audited`] refuses the request when it
//! cannot write it). Reads are not recorded. Append-only; never a secret or a body.

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use super::authenticator::Principal;
use crate::store::datetime_secs;

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Serialize, Deserialize)]
pub struct AuditRow {
    /// Joins a request's two rows.
    pub request_id: String,
    pub service: String,
    pub actor: String,
    pub role: String,
    pub token_id: String,
    pub method: String,
    pub path: String,
    /// 0 when the request arrived; then the HTTP status it was answered with.
    pub status: u16,
    pub at_ms: i64,
    pub at: u32,
}

impl AuditRow {
    /// The arrival row of a request.
    pub fn arrived(
        request_id: &str,
        service: &str,
        who: &Principal,
        method: &str,
        path: &str,
        at_ms: i64,
    ) -> AuditRow {
        AuditRow {
            request_id: request_id.to_owned(),
            service: service.to_owned(),
            actor: who.actor_label(),
            role: who.role.name().to_owned(),
            token_id: who.token_id.clone(),
            method: method.to_owned(),
            path: path.chars().take(1024).collect(),
            status: 0,
            at_ms,
            at: datetime_secs(at_ms),
        }
    }

    /// The row recording the answer to the same request.
    pub fn answered(&self, status: u16, at_ms: i64) -> AuditRow {
        AuditRow {
            status,
            at_ms,
            at: datetime_secs(at_ms),
            ..self.clone()
        }
    }
}

/// Appends `row`.
pub async fn append(db: &Client, row: &AuditRow) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<AuditRow>("api_audit").await?;
    insert.write(row).await?;
    insert.end().await
}

/// Every row of `service`, oldest first (for operators and tests).
pub async fn of_service(
    db: &Client,
    service: &str,
) -> Result<Vec<AuditRow>, clickhouse::error::Error> {
    db.query(
        "SELECT request_id, service, actor, role, token_id, method, path, status, at_ms, at \
         FROM api_audit WHERE service = ? ORDER BY at_ms, request_id, status",
    )
    .bind(service)
    .fetch_all()
    .await
}
