//! API keys: their format, hashing, scope and the in-memory key ring the gateway checks
//! requests against.
//!
//! A key is `tk_<key id>_<secret>`: a 16-hex-digit id (public, names the key in logs and
//! admin calls) and 64 hex digits of secret from the OS's CSPRNG (256 bits). Only the SHA-256
//! of the secret is stored; a high-entropy secret needs no slow hash. A key belongs to one
//! customer and optionally to a set of its agents: the customer of an event comes from the
//! key, and an event naming another customer or agent is refused. It never stores or logs
//! a secret.

use std::collections::HashMap;
use std::sync::RwLock;

use ring::rand::SecureRandom;
use tally_domain::{AgentId, CustomerId, UsageEvent};

use super::error::RequestError;

/// Most agents one key may be limited to.
pub const AGENTS_MAX: usize = 256;

/// A parsed bearer token.
#[derive(Debug, PartialEq, Eq)]
pub struct Token<'a> {
    pub key_id: &'a str,
    pub secret: &'a str,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl<'a> Token<'a> {
    /// Parses `tk_<16 hex>_<64 hex>`; anything else is [`RequestError::InvalidKey`].
    pub fn parse(raw: &'a str) -> Result<Token<'a>, RequestError> {
        let rest = raw.strip_prefix("tk_").ok_or(RequestError::InvalidKey)?;
        let (key_id, secret) = rest.split_once('_').ok_or(RequestError::InvalidKey)?;
        if !is_hex(key_id, 16) || !is_hex(secret, 64) {
            return Err(RequestError::InvalidKey);
        }
        Ok(Token { key_id, secret })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `secret`, lower-case hex.
pub fn hash_secret(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Equal without an early exit (timing does not reveal how many leading bytes match).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh key: `(bearer token, key id, secret hash)`.
pub fn generate() -> Result<(String, String, String), RequestError> {
    let rng = ring::rand::SystemRandom::new();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .map_err(|_| RequestError::Unavailable {
            detail: "the OS random number generator failed".into(),
        })?;
    let (id, secret) = (hex(&id), hex(&secret));
    let hash = hash_secret(&secret);
    Ok((format!("tk_{id}_{secret}"), id, hash))
}

/// Who a key lets publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub customer: CustomerId,
    /// Empty: every agent of the customer.
    pub agents: Vec<AgentId>,
}

/// Why a scope refuses an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("attribute `subject` is {found:?} but the API key is for customer {expected:?}")]
    OtherCustomer { found: String, expected: String },
    #[error("attribute `source` is {found:?}, an agent this API key may not publish for")]
    OtherAgent { found: String },
}

impl ScopeError {
    pub fn field(&self) -> &'static str {
        match self {
            ScopeError::OtherCustomer { .. } => "subject",
            ScopeError::OtherAgent { .. } => "source",
        }
    }
}

impl Scope {
    /// Refuses an event for another customer, or for an agent outside the key's set.
    pub fn check(&self, event: &UsageEvent) -> Result<(), ScopeError> {
        if event.customer != self.customer {
            return Err(ScopeError::OtherCustomer {
                found: event.customer.to_string(),
                expected: self.customer.to_string(),
            });
        }
        if !self.agents.is_empty() && !self.agents.contains(&event.agent) {
            return Err(ScopeError::OtherAgent {
                found: event.agent.to_string(),
            });
        }
        Ok(())
    }
}

/// A key's current state (the fold of its append-only rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub scope: Scope,
    pub secret_sha256: String,
    pub label: String,
    pub created_ms: i64,
    pub revoked: bool,
}

/// The keys the gateway knows, replaced wholesale on each refresh.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: RwLock<HashMap<String, KeyRecord>>,
}

impl KeyRing {
    /// The scope of a valid, unrevoked key named by `authorization` (`Bearer <key>`).
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<(String, Scope), RequestError> {
        let raw = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(RequestError::MissingKey)?;
        let token = Token::parse(raw)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let record = keys.get(token.key_id).ok_or(RequestError::InvalidKey)?;
        let presented = hash_secret(token.secret);
        if !constant_time_eq(presented.as_bytes(), record.secret_sha256.as_bytes()) {
            return Err(RequestError::InvalidKey);
        }
        if record.revoked {
            return Err(RequestError::RevokedKey);
        }
        Ok((record.key_id.clone(), record.scope.clone()))
    }

    /// Replaces every key (after a reload from the store).
    pub fn replace(&self, records: Vec<KeyRecord>) {
        let map = records.into_iter().map(|r| (r.key_id.clone(), r)).collect();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// Adds or updates one key (after an admin call on this instance).
    pub fn upsert(&self, record: KeyRecord) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.key_id.clone(), record);
    }

    /// Whether a key with this id is known (revoked or not).
    pub fn contains(&self, key_id: &str) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key_id)
    }

    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(revoked: bool) -> (KeyRing, String) {
        let (token, key_id, secret_sha256) = generate().unwrap();
        let ring = KeyRing::default();
        ring.upsert(KeyRecord {
            key_id,
            scope: Scope {
                customer: CustomerId::new("acme").unwrap(),
                agents: vec![],
            },
            secret_sha256,
            label: String::new(),
            created_ms: 0,
            revoked,
        });
        (ring, token)
    }

    #[test]
    fn a_generated_key_authenticates_and_its_secret_is_not_stored() {
        let (ring, token) = ring_with(false);
        let (_, scope) = ring.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(scope.customer.as_str(), "acme");
        let secret = token.rsplit('_').next().unwrap();
        assert!(!format!("{:?}", ring.keys.read().unwrap()).contains(secret));
    }

    #[test]
    fn missing_wrong_and_revoked_keys_are_told_apart() {
        let (ring, token) = ring_with(false);
        assert_eq!(
            ring.authenticate(None).unwrap_err(),
            RequestError::MissingKey
        );
        assert_eq!(
            ring.authenticate(Some("Basic x")).unwrap_err(),
            RequestError::MissingKey
        );
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('0') { '1' } else { '0' });
        assert_eq!(
            ring.authenticate(Some(&format!("Bearer {wrong}")))
                .unwrap_err(),
            RequestError::InvalidKey
        );
        assert_eq!(
            ring.authenticate(Some("Bearer tk_zz")).unwrap_err(),
            RequestError::InvalidKey
        );
        let (revoked, token) = ring_with(true);
        assert_eq!(
            revoked
                .authenticate(Some(&format!("Bearer {token}")))
                .unwrap_err(),
            RequestError::RevokedKey
        );
    }

    #[test]
    fn scopes_refuse_other_customers_and_agents() {
        let body = |c: &str, a: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"e","source":"{a}","subject":"{c}","type":"t","time":"2026-01-01T00:00:00Z"}}"#
            )
        };
        let ev = |c: &str, a: &str| UsageEvent::parse(body(c, a).as_bytes(), 4096).unwrap();
        let scope = Scope {
            customer: CustomerId::new("acme").unwrap(),
            agents: vec![AgentId::new("bot-1").unwrap()],
        };
        assert!(scope.check(&ev("acme", "bot-1")).is_ok());
        assert_eq!(
            scope.check(&ev("evil", "bot-1")).unwrap_err().field(),
            "subject"
        );
        assert_eq!(
            scope.check(&ev("acme", "bot-2")).unwrap_err().field(),
            "source"
        );
    }
}
