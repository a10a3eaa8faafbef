//! Attempt claims in a NATS KV bucket (`invoice_delivery.claims_bucket`): before attempt `n` of
//! a notification is made, the key `<notification key>.<n>` is created (create-only: the
//! server refuses a second create). The attempt number comes from the delivery log, so every
//! instance that read the same log names the same key and exactly one of them makes the
//! attempt; one that read the log before another's attempt was logged names a key that exists
//! and skips. A claim is stamped with the wall clock of the moment it is made (not the start of
//! the pass), and the attempt it covers (store read, PDF render and SMTP session, or the
//! webhook) is bounded as a whole by `timeout_ms`. A claim whose attempt was never logged (its
//! process stopped during the attempt) is stale only when it can be read and is older than
//! [`stale_after_ms`] (`timeout_ms` + [`STALE_AFTER_MS`], strictly more than an attempt can
//! last): the next instance logs that attempt as failed, and the next attempt is claimed after
//! the backoff. A claim that exists but cannot be read (absent on a lagging replica right after
//! another instance's create, an unparsable value, a failed get) is never stale: it is claimed
//! elsewhere and looked at again next pass.
//! Claims are never deleted (the bucket denies deletes): a few dozen bytes per attempt.

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How long after a claim's attempt timed out an unlogged claim is taken as abandoned (the
/// logging of an attempt is retried for about 15 s).
pub const STALE_AFTER_MS: i64 = 60_000;

/// The age past which a readable claim without a logged result is abandoned, for attempts
/// bounded by `timeout_ms`: always strictly more than `timeout_ms`.
pub fn stale_after_ms(timeout_ms: u64) -> i64 {
    i64::try_from(timeout_ms)
        .unwrap_or(i64::MAX)
        .saturating_add(STALE_AFTER_MS)
}

/// Whether a claim another instance holds is abandoned at `now_ms`: only a readable claim
/// older than [`stale_after_ms`] is; one whose value is unknown (`None`) never is.
pub fn is_stale(claim: Option<&Claim>, now_ms: i64, timeout_ms: u64) -> bool {
    claim.is_some_and(|c| c.at_ms.saturating_add(stale_after_ms(timeout_ms)) < now_ms)
}

/// Who claimed an attempt, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub by: String,
    pub at_ms: i64,
}

/// What became of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// This instance makes the attempt.
    Mine,
    /// Another instance (or an earlier process) claimed it; `None` when its value cannot be
    /// read (absent, unparsable, or the get failed): never stale ([`is_stale`]).
    Taken(Option<Claim>),
}

/// The claims bucket.
#[derive(Clone)]
pub struct Claims {
    kv: kv::Store,
    /// This instance's name in its claims.
    pub instance: String,
}

/// The KV key of attempt `attempt` of `notification_id`: the id with every character outside
/// `[A-Za-z0-9_-]` written as `=` and its hex code (`invoice.email:inv_1` →
/// `invoice=2eemail=3ainv_1.3`), so distinct ids have distinct keys.
pub fn key(notification_id: &str, attempt: u32) -> String {
    let mut k = String::with_capacity(notification_id.len() + 8);
    for c in notification_id.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            k.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                k.push_str(&format!("={b:02x}"));
            }
        }
    }
    format!("{k}.{attempt}")
}

impl Claims {
    pub fn new(kv: kv::Store, instance: String) -> Claims {
        Claims { kv, instance }
    }

    /// Claims attempt `attempt` of `notification_id`, stamped `now_ms` (the caller's clock at
    /// this call).
    pub async fn claim(
        &self,
        notification_id: &str,
        attempt: u32,
        now_ms: i64,
    ) -> Result<Claimed, String> {
        let k = key(notification_id, attempt);
        let value = serde_json::to_vec(&Claim {
            by: self.instance.clone(),
            at_ms: now_ms,
        })
        .map_err(|e| e.to_string())?;
        match self.kv.create(&k, Bytes::from(value)).await {
            Ok(_) => Ok(Claimed::Mine),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let held = match self.kv.get(&k).await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::warn!(key = %k, error = %e,
                            "reading an existing claim failed; taken as claimed elsewhere");
                        None
                    }
                };
                Ok(Claimed::Taken(
                    held.and_then(|b| serde_json::from_slice::<Claim>(&b).ok()),
                ))
            }
            Err(e) => Err(format!("claim {k}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_kv_tokens() {
        assert_eq!(key("invoice.email:inv_1", 3), "invoice=2eemail=3ainv_1.3");
        assert_ne!(key("a.b", 1), key("a:b", 1));
        assert_ne!(key("a", 1), key("a", 2));
        let k = key("x/é y", 1);
        assert!(k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-=.".contains(c)));
    }

    #[test]
    fn an_unreadable_claim_is_never_stale() {
        let far_future = i64::MAX / 2;
        assert!(!is_stale(None, far_future, 30_000));
        assert!(!is_stale(None, 0, 0));
    }

    #[test]
    fn a_readable_claim_is_stale_only_past_the_bound() {
        let c = Claim {
            by: "a".into(),
            at_ms: 1_000_000,
        };
        let bound = stale_after_ms(30_000);
        assert!(bound > 30_000, "strictly more than one attempt may last");
        assert!(!is_stale(Some(&c), 1_000_000 + 30_000, 30_000));
        assert!(!is_stale(Some(&c), 1_000_000 + bound, 30_000));
        assert!(is_stale(Some(&c), 1_000_000 + bound + 1, 30_000));
        assert_eq!(stale_after_ms(u64::MAX), i64::MAX);
    }
}
