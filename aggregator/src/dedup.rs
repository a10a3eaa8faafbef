//! Deduplication by identity (customer, source, event id), with a pending set for the batch in flight and a
//! committed set bounded by the horizon.
//!
//! An id moves from pending to committed only when its batch's commit marker is durable
//! ([`Dedup::commit_pending`]); it is never marked seen earlier. Every id carries the time
//! JetStream received it, and expiry counts the horizon back from the newest received time
//! the aggregator has read (not from the wall clock), so a backlog keeps the ids its re-sends
//! need; committed ids expire by whole minutes of received time, the slices of `limits.rs`.
//! Payloads are 64-bit hashes of what the event says, so a retry (same payload) and a
//! conflict (same id, different payload) are told apart. The committed set
//! ([`Committed`]: a sorted run of 20-byte entries behind a small hash table) keeps the low
//! 32 bits of the payload hash (a conflict that collides in those bits, probability 2^-32,
//! is treated as a plain retry: still never billed twice, only not reported).
//!
//! # Identity and collisions
//! An identity is stored as its key, the 128-bit xxh3 hash of (customer, source, id)
//! ([`event_key`]); the committed set keeps all 128 bits (16 as the bucket of the run, 112
//! stored) and compares all of them. Two different identities are confused only when their
//! keys are equal: for a good 128-bit hash, probability 2^-128 per pair. With n ids held and
//! N lookups in the whole life of a deployment, the chance that any new event is taken for a
//! duplicate (and not counted) is at most N * n / 2^128; for 10^15 lookups against 10^9 ids,
//! below 2^-28 * 2^-40 = 2^-68. Nothing is ever counted twice by a collision: it can only
//! drop an event. The pending set keys the batch in flight the same way.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::committed::Committed;

use xxhash_rust::xxh3::Xxh3;

/// The dedup key of the identity (customer, source, id). Customer and agent ids never
/// contain a NUL byte, so the separators make the hashed text unambiguous.
pub fn event_key(customer: &str, agent: &str, id: &str) -> u128 {
    let mut h = Xxh3::new();
    h.update(customer.as_bytes());
    h.update(&[0]);
    h.update(agent.as_bytes());
    h.update(&[0]);
    h.update(id.as_bytes());
    h.digest128()
}

/// A stable hash of what an event says (stored with raw events, compared after restarts).
pub fn payload_hash(event_type: &str, time_ms: i64, data: &str) -> u64 {
    let mut h = Xxh3::new();
    h.update(event_type.as_bytes());
    h.update(&[0]);
    h.update(&time_ms.to_le_bytes());
    h.update(data.as_bytes());
    h.digest()
}

/// Keys are already uniform 128-bit hashes: hashing them again would only cost time.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

/// What the dedup set says about an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: count it.
    New,
    /// Seen with the same payload and already committed: ack, count nothing.
    Committed,
    /// Seen with the same payload in the batch in flight: count nothing, ack with the batch.
    Pending,
    /// Seen with a different payload: count nothing, report.
    Conflict,
}

/// The pending and committed id sets.
#[derive(Debug, Default)]
pub struct Dedup {
    committed: Committed,
    /// key -> (payload hash, received at)
    pending: HashMap<u128, (u64, u32), BuildHasherDefault<KeyHasher>>,
}

impl Dedup {
    pub fn new() -> Self {
        Dedup::default()
    }

    /// Looks an id up without changing anything.
    pub fn check(&self, key: u128, payload_hash: u64) -> Seen {
        if let Some((h, _)) = self.pending.get(&key) {
            return if *h == payload_hash {
                Seen::Pending
            } else {
                Seen::Conflict
            };
        }
        match self.committed.get(key) {
            Some((h, _)) if h == payload_hash as u32 => Seen::Committed,
            Some(_) => Seen::Conflict,
            None => Seen::New,
        }
    }

    /// Reserves a new id, received at `received_secs`, for the batch in flight.
    pub fn reserve(&mut self, key: u128, payload_hash: u64, received_secs: u32) {
        debug_assert_eq!(self.check(key, payload_hash), Seen::New);
        self.pending.insert(key, (payload_hash, received_secs));
    }

    /// The batch's marker is durable: its ids become committed.
    pub fn commit_pending(&mut self) {
        for (key, (payload_hash, received_secs)) in self.pending.drain() {
            self.committed
                .insert(key, payload_hash as u32, received_secs);
        }
    }

    /// Records an id known to be committed (recovery), received at `received_secs`; whether
    /// it was not in the set yet.
    pub fn insert_committed(&mut self, key: u128, payload_hash: u64, received_secs: u32) -> bool {
        self.committed
            .insert(key, payload_hash as u32, received_secs)
    }

    /// Forgets committed ids received more than `horizon_secs` before `newest_secs` (the
    /// newest received time read so far), by whole minutes as [`Dedup::expire_before`];
    /// returns how many.
    pub fn expire(&mut self, newest_secs: u32, horizon_secs: u32) -> usize {
        self.expire_before(newest_secs.saturating_sub(horizon_secs))
    }

    /// Forgets committed ids received before the minute of `cutoff_secs` (the consumer's
    /// cutoffs are whole minutes, `limits::aligned`); returns how many.
    pub fn expire_before(&mut self, cutoff_secs: u32) -> usize {
        self.committed.expire_before(cutoff_secs)
    }

    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }

    /// Heap bytes of the committed set.
    pub fn committed_bytes(&self) -> usize {
        self.committed.bytes()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_per_customer() {
        assert_ne!(event_key("a", "x", "1"), event_key("b", "x", "1"));
        assert_ne!(event_key("a", "x", "1"), event_key("a", "y", "1"));
        assert_ne!(event_key("a1", "x", ""), event_key("a", "x", "1"));
    }

    #[test]
    fn pending_then_committed_then_expired() {
        let mut d = Dedup::new();
        let (k, h) = (event_key("acme", "bot", "e1"), payload_hash("t", 1, "{}"));
        assert_eq!(d.check(k, h), Seen::New);
        // received in minute 100
        d.reserve(k, h, 6030);
        assert_eq!(d.check(k, h), Seen::Pending);
        assert_eq!(d.check(k, h ^ 1), Seen::Conflict);
        d.commit_pending();
        assert_eq!(d.check(k, h), Seen::Committed);
        assert_eq!(d.check(k, h ^ 1), Seen::Conflict);
        assert_eq!(d.expire(9000, 3000), 0);
        // expiry is by whole minutes: a cutoff within minute 100 keeps it
        assert_eq!(d.expire(9059, 3000), 0);
        assert_eq!(d.expire(9060, 3000), 1);
        assert_eq!(d.check(k, h), Seen::New);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A message: check, and reserve it when new.
        Message(u8, u8, u32),
        Commit,
        Expire(u32),
        Recover(u8, u8, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (any::<u8>(), 0u8..3, 0u32..200_000).prop_map(|(i, p, t)| Op::Message(i, p, t)),
            2 => Just(Op::Commit),
            1 => (0u32..200_000).prop_map(Op::Expire),
            1 => (any::<u8>(), 0u8..3, 0u32..200_000).prop_map(|(i, p, t)| Op::Recover(i, p, t)),
        ]
    }

    proptest! {
        /// The verdicts, the sizes and what expires are those of a reference model of
        /// HashMaps keyed by the identity's text.
        #[test]
        fn agrees_with_a_reference_model(ops in prop::collection::vec(op(), 0..600)) {
            let mut d = Dedup::new();
            // identity -> (payload, minute received)
            let mut committed: HashMap<String, (u64, u32)> = HashMap::new();
            let mut pending: HashMap<String, (u64, u32)> = HashMap::new();
            let ident = |i: u8| (format!("customer-{}", i % 5), format!("agent-{}", i % 3), format!("id-{i}"));
            for op in ops {
                match op {
                    Op::Message(i, p, t) => {
                        let (c, a, id) = ident(i);
                        let (k, h) = (event_key(&c, &a, &id), payload_hash("t", i64::from(p), "{}"));
                        let name = format!("{c}/{a}/{id}");
                        let want = match (pending.get(&name), committed.get(&name)) {
                            (Some((ph, _)), _) if *ph == h => Seen::Pending,
                            (Some(_), _) => Seen::Conflict,
                            (None, Some((ph, _))) if *ph == h => Seen::Committed,
                            (None, Some(_)) => Seen::Conflict,
                            (None, None) => Seen::New,
                        };
                        prop_assert_eq!(d.check(k, h), want);
                        if want == Seen::New {
                            d.reserve(k, h, t);
                            pending.insert(name, (h, t / 60));
                        }
                    }
                    Op::Commit => {
                        d.commit_pending();
                        committed.extend(pending.drain());
                    }
                    Op::Expire(c) => {
                        let before = committed.len();
                        committed.retain(|_, v| v.1 >= c / 60);
                        prop_assert_eq!(d.expire_before(c), before - committed.len());
                    }
                    Op::Recover(i, p, t) => {
                        let (c, a, id) = ident(i);
                        let (k, h) = (event_key(&c, &a, &id), payload_hash("t", i64::from(p), "{}"));
                        let new = committed.insert(format!("{c}/{a}/{id}"), (h, t / 60)).is_none();
                        prop_assert_eq!(d.insert_committed(k, h, t), new);
                    }
                }
                prop_assert_eq!(d.committed_len(), committed.len());
                prop_assert_eq!(d.pending_len(), pending.len());
            }
        }
    }

    #[test]
    fn payload_hash_distinguishes_fields() {
        assert_ne!(payload_hash("t", 1, "{}"), payload_hash("t", 2, "{}"));
        assert_ne!(payload_hash("t", 1, "{}"), payload_hash("u", 1, "{}"));
        assert_ne!(
            payload_hash("t", 1, r#"{"a":1}"#),
            payload_hash("t", 1, r#"{"a":2}"#)
        );
    }
}
