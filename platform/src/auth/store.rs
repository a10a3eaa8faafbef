//! API tokens in ClickHouse (`api_tokens`, migration 0040): append-only rows, one per
//! creation or revocation; a token's state is the fold of its rows ([`fold`]), and a
//! revocation is for good. Only the SHA-256 of a secret is stored. This module owns the table
//! and the operations `tally-access tokens-*` runs; it never sees a secret after [`create`]
//! returns it.

use clickhouse::Client;
use serde::{Deserialize, Serialize};

use super::role::Role;
use super::token;
use crate::store::datetime_secs;

/// Longest actor name.
pub const ACTOR_MAX_CHARS: usize = 64;

/// A token's current state.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_id: String,
    /// Who acts with it: recorded as `api:<actor>` with every change.
    pub actor: String,
    pub role: Role,
    pub secret_sha256: [u8; 32],
    pub revoked: bool,
    pub created_ms: i64,
    /// Who created it (the operator running `tally-access`).
    pub created_by: String,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("token_id", &self.token_id)
            .field("actor", &self.actor)
            .field("role", &self.role)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("clickhouse: {context}: {source}")]
    ClickHouse {
        context: &'static str,
        source: clickhouse::error::Error,
    },
    #[error("actor {0:?}: must be 1 to 64 of [A-Za-z0-9._@-]")]
    InvalidActor(String),
    #[error("no API token {0}")]
    UnknownToken(String),
    #[error("the OS random number generator failed")]
    Random,
}

fn ch(context: &'static str) -> impl FnOnce(clickhouse::error::Error) -> TokenStoreError {
    move |source| TokenStoreError::ClickHouse { context, source }
}

#[derive(clickhouse::Row, Serialize, Deserialize)]
struct TokenRow {
    token_id: String,
    actor: String,
    role: String,
    secret_sha256: String,
    revoked: u8,
    changed_by: String,
    changed_ms: i64,
    changed_at: u32,
}

/// Checks an actor name: 1 to 64 of `[A-Za-z0-9._@-]` (it lands in audit rows and logs).
pub fn validate_actor(actor: &str) -> Result<(), TokenStoreError> {
    let ok = !actor.is_empty()
        && actor.chars().count() <= ACTOR_MAX_CHARS
        && actor
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(TokenStoreError::InvalidActor(
            actor.chars().take(ACTOR_MAX_CHARS).collect(),
        ))
    }
}

async fn append(db: &Client, row: &TokenRow) -> Result<(), TokenStoreError> {
    let mut insert = db
        .insert::<TokenRow>("api_tokens")
        .await
        .map_err(ch("insert api_tokens"))?;
    insert.write(row).await.map_err(ch("insert api_tokens"))?;
    insert.end().await.map_err(ch("insert api_tokens"))
}

/// Creates a token for `actor` with `role`; returns the bearer token (shown once, never
/// stored) and the record.
pub async fn create(
    db: &Client,
    actor: &str,
    role: Role,
    created_by: &str,
    now_ms: i64,
) -> Result<(String, TokenRecord), TokenStoreError> {
    validate_actor(actor)?;
    let (bearer, token_id, hash) = token::generate().map_err(|_| TokenStoreError::Random)?;
    let row = TokenRow {
        token_id,
        actor: actor.to_owned(),
        role: role.name().to_owned(),
        secret_sha256: hash,
        revoked: 0,
        changed_by: created_by.to_owned(),
        changed_ms: now_ms,
        changed_at: datetime_secs(now_ms),
    };
    append(db, &row).await?;
    let record = fold(vec![row]).pop().ok_or(TokenStoreError::Random)?;
    Ok((bearer, record))
}

/// Revokes a token by appending a revocation row; returns its final state.
pub async fn revoke(
    db: &Client,
    token_id: &str,
    revoked_by: &str,
    now_ms: i64,
) -> Result<TokenRecord, TokenStoreError> {
    let mut record = load(db)
        .await?
        .into_iter()
        .find(|r| r.token_id == token_id)
        .ok_or_else(|| TokenStoreError::UnknownToken(token_id.chars().take(40).collect()))?;
    append(
        db,
        &TokenRow {
            token_id: record.token_id.clone(),
            actor: record.actor.clone(),
            role: record.role.name().to_owned(),
            secret_sha256: String::new(),
            revoked: 1,
            changed_by: revoked_by.to_owned(),
            changed_ms: now_ms,
            changed_at: datetime_secs(now_ms),
        },
    )
    .await?;
    record.revoked = true;
    Ok(record)
}

/// Every token's current state, in token id order.
pub async fn load(db: &Client) -> Result<Vec<TokenRecord>, TokenStoreError> {
    let rows: Vec<TokenRow> = db
        .query(
            "SELECT token_id, actor, role, secret_sha256, revoked, changed_by, changed_ms, changed_at \
             FROM api_tokens ORDER BY token_id, changed_ms",
        )
        .fetch_all()
        .await
        .map_err(ch("read api_tokens"))?;
    Ok(fold(rows))
}

/// Folds rows (ordered by token id, then time) into states: the first row creates, any
/// revocation row revokes for good. A row whose role, actor or hash does not parse is
/// skipped with a warning (its token then does not authenticate: fail closed).
fn fold(rows: Vec<TokenRow>) -> Vec<TokenRecord> {
    let mut out: Vec<TokenRecord> = Vec::new();
    for r in rows {
        if let Some(last) = out.last_mut().filter(|l| l.token_id == r.token_id) {
            last.revoked |= r.revoked != 0;
            continue;
        }
        let role = r.role.parse::<Role>();
        let hash = token::parse_hash(&r.secret_sha256);
        match (role, hash, validate_actor(&r.actor)) {
            (Ok(role), Some(secret_sha256), Ok(())) => out.push(TokenRecord {
                token_id: r.token_id,
                actor: r.actor,
                role,
                secret_sha256,
                revoked: r.revoked != 0,
                created_ms: r.changed_ms,
                created_by: r.changed_by,
            }),
            _ => {
                tracing::warn!(token_id = %r.token_id, "skipping an api_tokens row that does not parse");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, role: &str, revoked: u8, ms: i64) -> TokenRow {
        TokenRow {
            token_id: id.into(),
            actor: "alice".into(),
            role: role.into(),
            secret_sha256: if revoked == 0 {
                "ab".repeat(32)
            } else {
                String::new()
            },
            revoked,
            changed_by: "ops".into(),
            changed_ms: ms,
            changed_at: 0,
        }
    }

    #[test]
    fn a_revocation_is_for_good_and_bad_rows_are_skipped() {
        let states = fold(vec![
            row("a", "reader", 0, 1),
            row("a", "reader", 1, 2),
            row("b", "root", 0, 1),
            row("c", "admin", 0, 1),
        ]);
        let ids: Vec<(&str, bool)> = states
            .iter()
            .map(|r| (r.token_id.as_str(), r.revoked))
            .collect();
        assert_eq!(ids, [("a", true), ("c", false)]);
        assert_eq!(states[0].created_ms, 1);
    }

    #[test]
    fn actors_are_short_printable_names() {
        for ok in ["alice", "ops.team@example", "ci-1"] {
            assert!(validate_actor(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "a\nb", &"x".repeat(65), "x;drop"] {
            assert!(validate_actor(bad).is_err(), "{bad:?}");
        }
    }
}
