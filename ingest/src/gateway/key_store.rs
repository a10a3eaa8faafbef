//! API keys in ClickHouse (`api_keys`, migration 0005): append-only rows, one per creation
//! or revocation; the current state of a key is the fold of its rows. This module owns that
//! table and the key management operations the admin API and the CLI share. It never sees a
//! secret after [`create`] returns it.

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::{AgentId, CustomerId};
use tally_platform::store::datetime_secs;

use super::auth::{generate, KeyRecord, Scope, AGENTS_MAX};
use super::error::RequestError;

/// Longest key label, in characters.
pub const LABEL_MAX_CHARS: usize = 200;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("clickhouse: {context}: {source}")]
    ClickHouse {
        context: &'static str,
        source: clickhouse::error::Error,
    },
    #[error("field `{field}`: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("no API key {0}")]
    UnknownKey(String),
    #[error(transparent)]
    Random(#[from] RequestError),
}

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct KeyRow {
    key_id: String,
    customer: String,
    agents: Vec<String>,
    secret_sha256: String,
    label: String,
    revoked: u8,
    changed_at: u32,
    changed_ms: i64,
}

fn ch(context: &'static str) -> impl FnOnce(clickhouse::error::Error) -> KeyStoreError {
    move |source| KeyStoreError::ClickHouse { context, source }
}

/// Validates a scope and label given by an operator.
pub fn scope_from(customer: &str, agents: &[String], label: &str) -> Result<Scope, KeyStoreError> {
    let customer = CustomerId::new(customer).map_err(|e| KeyStoreError::Invalid {
        field: "customer",
        detail: e.to_string(),
    })?;
    if agents.len() > AGENTS_MAX {
        return Err(KeyStoreError::Invalid {
            field: "agents",
            detail: format!("at most {AGENTS_MAX} agents"),
        });
    }
    let agents = agents
        .iter()
        .map(|a| AgentId::new(a.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KeyStoreError::Invalid {
            field: "agents",
            detail: e.to_string(),
        })?;
    if label.chars().count() > LABEL_MAX_CHARS || label.chars().any(char::is_control) {
        return Err(KeyStoreError::Invalid {
            field: "label",
            detail: format!("at most {LABEL_MAX_CHARS} printable characters"),
        });
    }
    Ok(Scope { customer, agents })
}

fn row(r: &KeyRecord, changed_ms: i64) -> KeyRow {
    KeyRow {
        key_id: r.key_id.clone(),
        customer: r.scope.customer.to_string(),
        agents: r.scope.agents.iter().map(ToString::to_string).collect(),
        secret_sha256: r.secret_sha256.clone(),
        label: r.label.clone(),
        revoked: u8::from(r.revoked),
        changed_at: datetime_secs(changed_ms),
        changed_ms,
    }
}

async fn append(db: &Client, r: &KeyRow) -> Result<(), KeyStoreError> {
    let mut insert = db
        .insert::<KeyRow>("api_keys")
        .await
        .map_err(ch("insert api_keys"))?;
    insert.write(r).await.map_err(ch("insert api_keys"))?;
    insert.end().await.map_err(ch("insert api_keys"))
}

/// Creates a key; returns the bearer token (shown once, never stored) and the record.
pub async fn create(
    db: &Client,
    scope: Scope,
    label: &str,
    now_ms: i64,
) -> Result<(String, KeyRecord), KeyStoreError> {
    let (token, key_id, secret_sha256) = generate()?;
    let record = KeyRecord {
        key_id,
        scope,
        secret_sha256,
        label: label.to_owned(),
        created_ms: now_ms,
        revoked: false,
    };
    append(db, &row(&record, now_ms)).await?;
    Ok((token, record))
}

/// Revokes a key by appending a revocation row; returns its final state.
pub async fn revoke(db: &Client, key_id: &str, now_ms: i64) -> Result<KeyRecord, KeyStoreError> {
    let mut record = load(db)
        .await?
        .into_iter()
        .find(|r| r.key_id == key_id)
        .ok_or_else(|| KeyStoreError::UnknownKey(key_id.chars().take(40).collect()))?;
    record.revoked = true;
    append(db, &row(&record, now_ms)).await?;
    Ok(record)
}

/// Every key's current state, in key id order.
pub async fn load(db: &Client) -> Result<Vec<KeyRecord>, KeyStoreError> {
    let rows: Vec<KeyRow> = db
        .query(
            "SELECT key_id, customer, agents, secret_sha256, label, revoked, changed_at, changed_ms \
             FROM api_keys ORDER BY key_id, changed_ms",
        )
        .fetch_all()
        .await
        .map_err(ch("read api_keys"))?;
    Ok(fold(rows))
}

/// Folds rows (ordered by key id, then time) into states: the first row creates, a revoked
/// row revokes for good. Rows that are not valid are skipped with a warning.
fn fold(rows: Vec<KeyRow>) -> Vec<KeyRecord> {
    let mut out: Vec<KeyRecord> = Vec::new();
    for r in rows {
        if let Some(last) = out.last_mut().filter(|l| l.key_id == r.key_id) {
            last.revoked |= r.revoked != 0;
            continue;
        }
        match scope_from(&r.customer, &r.agents, &r.label) {
            Ok(scope) => out.push(KeyRecord {
                key_id: r.key_id,
                scope,
                secret_sha256: r.secret_sha256,
                label: r.label,
                created_ms: r.changed_ms,
                revoked: r.revoked != 0,
            }),
            Err(e) => {
                tracing::warn!(key_id = %r.key_id, error = %e, "skipping an invalid api_keys row");
            }
        }
    }
    out
}
