//! Deciding who a request is and whether it may do what it asks, from the
//! `Authorization` header alone: the same for every API and every transport.
//!
//! [`Authenticator::check`] is the pure decision over the tokens held in memory;
//! [`Authenticator::authorize`] adds one reload from the store for a well-formed token whose id
//! is not held yet (created since the last refresh; at most one such reload per second, so
//! random ids cannot hammer ClickHouse), and [`Authenticator::refresh_every`] reloads on a
//! period so revocations spread. A failed reload keeps the previous set.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clickhouse::Client;

use super::role::{Permission, Role};
use super::store::{self, TokenRecord, TokenStoreError};
use super::token::{same_hash, Presented};
use crate::shutdown::Shutdown;

/// Shortest time between two reloads triggered by unknown token ids.
pub const MISS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Who a request acts as, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub actor: String,
    pub role: Role,
}

impl Principal {
    /// The actor recorded with every change: `api:<actor>`.
    pub fn actor_label(&self) -> String {
        format!("api:{}", self.actor)
    }
}

/// Why a request was refused. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("header `Authorization: Bearer <token>` is missing")]
    Missing,
    #[error("the bearer token is not valid")]
    Invalid,
    #[error("the bearer token has been revoked")]
    Revoked,
    #[error("role {role} may not {permission}", permission = permission.name())]
    Forbidden { role: Role, permission: Permission },
}

impl AuthError {
    /// 401 for who-are-you failures, 403 for a known principal asking beyond its role.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden { .. } => 403,
            _ => 401,
        }
    }

    /// The stable code of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Invalid => "invalid_token",
            AuthError::Revoked => "revoked_token",
            AuthError::Forbidden { .. } => "forbidden",
        }
    }
}

/// The token of an `Authorization` header value: scheme `Bearer` (any case), one space.
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid);
    }
    Ok(token.trim())
}

/// The tokens an API accepts, and where they come from.
pub struct Authenticator {
    /// Names this API in the audit (`rater`, `invoicer`, `payments`, `gateway`).
    service: &'static str,
    tokens: RwLock<HashMap<String, TokenRecord>>,
    /// Where tokens are loaded from and audit rows go; `None` only for tests of the decision.
    db: Option<Client>,
    last_miss_reload: tokio::sync::Mutex<Option<Instant>>,
}

impl Authenticator {
    /// An authenticator over the token store of `db`; call [`Authenticator::reload`] before
    /// serving so the first request sees the tokens.
    pub fn new(service: &'static str, db: Client) -> Authenticator {
        Authenticator {
            service,
            tokens: RwLock::default(),
            db: Some(db),
            last_miss_reload: tokio::sync::Mutex::new(None),
        }
    }

    /// An authenticator holding exactly `records`, with no store (nothing it authorizes can be
    /// audited, so writes through it are refused by [`super::hook::audited`]).
    pub fn with_records(service: &'static str, records: Vec<TokenRecord>) -> Authenticator {
        let a = Authenticator {
            service,
            tokens: RwLock::default(),
            db: None,
            last_miss_reload: tokio::sync::Mutex::new(None),
        };
        a.replace(records);
        a
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The store, when there is one.
    pub fn db(&self) -> Option<&Client> {
        self.db.as_ref()
    }

    /// Number of tokens held.
    pub fn len(&self) -> usize {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn replace(&self, records: Vec<TokenRecord>) {
        let map = records
            .into_iter()
            .map(|r| (r.token_id.clone(), r))
            .collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    fn holds(&self, token_id: &str) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(token_id)
    }

    /// The decision over the tokens held now: who `authorization` is, and whether its role
    /// grants `needed`. The secret's hash is compared in constant time; a revoked token is
    /// told apart only after its secret matched.
    pub fn check(
        &self,
        authorization: Option<&str>,
        needed: Permission,
    ) -> Result<Principal, AuthError> {
        let presented = Presented::parse(bearer(authorization)?).ok_or(AuthError::Invalid)?;
        let hash = presented.secret_sha256();
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let record = tokens.get(presented.token_id).ok_or(AuthError::Invalid)?;
        if !same_hash(&hash, &record.secret_sha256) {
            return Err(AuthError::Invalid);
        }
        if record.revoked {
            return Err(AuthError::Revoked);
        }
        if !record.role.allows(needed) {
            return Err(AuthError::Forbidden {
                role: record.role,
                permission: needed,
            });
        }
        Ok(Principal {
            token_id: record.token_id.clone(),
            actor: record.actor.clone(),
            role: record.role,
        })
    }

    /// [`Authenticator::check`], reloading once first when the token is well formed but its id
    /// is not held (rate-limited to one such reload per [`MISS_RELOAD_INTERVAL`]).
    pub async fn authorize(
        &self,
        authorization: Option<&str>,
        needed: Permission,
    ) -> Result<Principal, AuthError> {
        let first = self.check(authorization, needed);
        let unknown_id = matches!(first, Err(AuthError::Invalid))
            && bearer(authorization)
                .ok()
                .and_then(Presented::parse)
                .is_some_and(|p| !self.holds(p.token_id));
        if !unknown_id || self.db.is_none() {
            return first;
        }
        {
            let mut last = self.last_miss_reload.lock().await;
            if last.is_some_and(|t| t.elapsed() < MISS_RELOAD_INTERVAL) {
                return first;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.reload().await {
            tracing::warn!(service = self.service, error = %e, "reloading API tokens for an unknown token id failed");
            return first;
        }
        self.check(authorization, needed)
    }

    /// Replaces the tokens held by the store's; returns how many there are.
    pub async fn reload(&self) -> Result<usize, TokenStoreError> {
        let Some(db) = &self.db else {
            return Ok(self.len());
        };
        let records = store::load(db).await?;
        let n = records.len();
        self.replace(records);
        Ok(n)
    }

    /// Reloads every `period` until `shutdown`; a failed reload keeps the previous set.
    pub fn refresh_every(
        self: &Arc<Self>,
        period: Duration,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                if let Err(e) = me.reload().await {
                    tracing::warn!(service = me.service, error = %e, "reloading API tokens failed; keeping the previous set");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::{generate, parse_hash};

    fn record(role: Role, revoked: bool) -> (String, TokenRecord) {
        let (bearer, token_id, hash) = generate().unwrap();
        let r = TokenRecord {
            token_id,
            actor: "alice".into(),
            role,
            secret_sha256: parse_hash(&hash).unwrap(),
            revoked,
            created_ms: 0,
            created_by: "test".into(),
        };
        (format!("Bearer {bearer}"), r)
    }

    #[test]
    fn a_valid_token_is_its_principal_and_its_role_bounds_it() {
        let (editor, r) = record(Role::CatalogEditor, false);
        let auth = Authenticator::with_records("rater", vec![r.clone()]);
        let p = auth.check(Some(&editor), Permission::EditCatalog).unwrap();
        assert_eq!(
            (p.actor_label(), p.role),
            ("api:alice".into(), Role::CatalogEditor)
        );
        assert_eq!(
            auth.check(Some(&editor), Permission::OperateInvoices),
            Err(AuthError::Forbidden {
                role: Role::CatalogEditor,
                permission: Permission::OperateInvoices
            })
        );
        let lower = editor.replacen("Bearer", "bearer", 1);
        assert!(auth.check(Some(&lower), Permission::Read).is_ok());
    }

    #[test]
    fn missing_malformed_unknown_wrong_and_revoked_tokens_are_refused() {
        let (good, r) = record(Role::Admin, false);
        let (revoked, rr) = record(Role::Admin, true);
        let (stranger, _) = record(Role::Admin, false);
        let auth = Authenticator::with_records("invoicer", vec![r, rr]);
        let wrong_secret = format!("{}0", &good[..good.len() - 1]);
        let wrong_secret = if wrong_secret == good {
            format!("{}1", &good[..good.len() - 1])
        } else {
            wrong_secret
        };
        let cases = [
            (None, AuthError::Missing),
            (Some("Basic YWxpY2U6cHc="), AuthError::Invalid),
            (Some("Bearer"), AuthError::Invalid),
            (Some("Bearer tly_nope"), AuthError::Invalid),
            (Some(stranger.as_str()), AuthError::Invalid),
            (Some(wrong_secret.as_str()), AuthError::Invalid),
            (Some(revoked.as_str()), AuthError::Revoked),
        ];
        for (header, want) in cases {
            assert_eq!(
                auth.check(header, Permission::Read),
                Err(want.clone()),
                "{header:?}"
            );
            assert_eq!(want.status(), 401);
        }
    }
}
