//! A compact hash table of committed event ids: open addressing with linear probing over
//! 24-byte slots (a 128-bit key, the low 32 bits of the payload hash, the commit time in
//! seconds), grown by half when 80% full. With the tag byte below a slot takes 25 bytes, so
//! an id takes from about 31 bytes (80% full) to 47 (53% full, right after growing). It holds
//! the ids committed lately, in front of the sorted run of `committed.rs` (20 bytes an id),
//! which takes them over in bulk ([`IdSet::drain`]). Keys are uniformly distributed hashes,
//! so the slot index is the high key bits scaled to the capacity. It only stores and finds;
//! the dedup rules live in `dedup`.
//!
//! Beside the slots, one tag byte per slot (0 for empty, else 7 bits of the key with the top
//! bit set) lets a probe run over the small tag array and read a 24-byte slot only when its
//! tag matches. Almost every id the aggregator looks up is new, and a miss then costs one
//! read of a few adjacent tags (a table 24 times smaller, mostly in cache) instead of a walk
//! over the slots, each a likely cache miss in a table of tens of megabytes.

/// One slot; empty when its tag is 0 (key 0 is stored as key 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
struct Slot {
    hi: u64,
    lo: u64,
    payload: u32,
    at_secs: u32,
}

/// The tag of an occupied slot holding a key whose low half is `lo`: never 0.
fn tag(lo: u64) -> u8 {
    (lo >> 57) as u8 | 0x80
}

const MIN_CAPACITY: usize = 64;
/// Grow when `len > capacity * LOAD_NUM / LOAD_DEN`.
const LOAD_NUM: usize = 4;
const LOAD_DEN: usize = 5;

/// Committed ids with their payload hash (32 bits) and commit time.
#[derive(Debug, Default)]
pub struct IdSet {
    slots: Vec<Slot>,
    /// `tags[i]` is 0 when `slots[i]` is empty, else [`tag`] of its key.
    tags: Vec<u8>,
    len: usize,
}

fn split(key: u128) -> (u64, u64) {
    let key = if key == 0 { 1 } else { key };
    ((key >> 64) as u64, key as u64)
}

impl IdSet {
    pub fn new() -> Self {
        IdSet::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes held by the table (slots and tags).
    pub fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>() + self.tags.capacity()
    }

    fn home(&self, hi: u64) -> usize {
        ((u128::from(hi) * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, hi: u64, lo: u64) -> usize {
        let cap = self.tags.len();
        let want = tag(lo);
        let mut i = self.home(hi);
        loop {
            let t = self.tags[i];
            if t == 0 {
                return i;
            }
            if t == want {
                let s = &self.slots[i];
                if s.hi == hi && s.lo == lo {
                    return i;
                }
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// The payload hash and commit time stored for `key`.
    pub fn get(&self, key: u128) -> Option<(u32, u32)> {
        if self.slots.is_empty() {
            return None;
        }
        let (hi, lo) = split(key);
        let i = self.find(hi, lo);
        if self.tags[i] == 0 {
            return None;
        }
        let s = &self.slots[i];
        Some((s.payload, s.at_secs))
    }

    /// Inserts or overwrites `key`.
    pub fn insert(&mut self, key: u128, payload: u32, at_secs: u32) {
        if (self.len + 1) * LOAD_DEN > self.slots.len() * LOAD_NUM {
            self.resize((self.slots.len() * 3 / 2).max(MIN_CAPACITY));
        }
        let (hi, lo) = split(key);
        self.place(Slot {
            hi,
            lo,
            payload,
            at_secs,
        });
    }

    /// Takes every entry out, (key, payload, commit time) in no particular order; the table
    /// keeps its capacity.
    pub fn drain(&mut self) -> Vec<(u128, u32, u32)> {
        let out = self
            .slots
            .iter()
            .zip(&self.tags)
            .filter(|(_, t)| **t != 0)
            .map(|(s, _)| {
                (
                    (u128::from(s.hi) << 64) | u128::from(s.lo),
                    s.payload,
                    s.at_secs,
                )
            })
            .collect();
        self.tags.fill(0);
        self.len = 0;
        out
    }

    /// Keeps only the ids for which `keep(at_secs)` is true; returns how many were dropped.
    pub fn retain_by_time(&mut self, keep: impl Fn(u32) -> bool) -> usize {
        let before = self.len;
        let kept: Vec<Slot> = self
            .slots
            .iter()
            .zip(&self.tags)
            .filter(|(s, t)| **t != 0 && keep(s.at_secs))
            .map(|(s, _)| *s)
            .collect();
        // the load right after a growth (53%), not 80%: a table rebuilt full would grow
        // (a second rebuild) at the next insert
        let capacity = (kept.len() * LOAD_DEN / LOAD_NUM * 3 / 2 + 1).max(MIN_CAPACITY);
        self.rebuild(capacity, kept);
        before - self.len
    }

    fn resize(&mut self, capacity: usize) {
        let old_slots = std::mem::take(&mut self.slots);
        let old_tags = std::mem::take(&mut self.tags);
        let occupied = old_slots
            .into_iter()
            .zip(old_tags)
            .filter(|(_, t)| *t != 0)
            .map(|(s, _)| s);
        self.rebuild(capacity, occupied);
    }

    fn rebuild(&mut self, capacity: usize, entries: impl IntoIterator<Item = Slot>) {
        self.slots = vec![Slot::default(); capacity];
        self.tags = vec![0; capacity];
        self.len = 0;
        for s in entries {
            self.place(s);
        }
    }

    /// Puts `s` into a table with room, as [`IdSet::insert`] does without the growth check.
    fn place(&mut self, s: Slot) {
        let i = self.find(s.hi, s.lo);
        if self.tags[i] == 0 {
            self.len += 1;
            self.tags[i] = tag(s.lo);
        }
        self.slots[i] = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn slots_are_24_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn zero_key_is_storable() {
        let mut s = IdSet::new();
        s.insert(0, 7, 9);
        assert_eq!(s.get(0), Some((7, 9)));
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec((0u128..500, any::<u32>(), 0u32..100), 0..2000), cutoff in 0u32..100) {
            let mut set = IdSet::new();
            let mut model: HashMap<u128, (u32, u32)> = HashMap::new();
            for (k, p, t) in ops {
                let key = k.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
                set.insert(key, p, t);
                model.insert(key, (p, t));
            }
            prop_assert_eq!(set.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(set.get(*k), Some(*v));
            }
            let dropped = set.retain_by_time(|t| t >= cutoff);
            model.retain(|_, v| v.1 >= cutoff);
            prop_assert_eq!(set.len(), model.len());
            prop_assert_eq!(dropped + model.len(), model.len() + dropped);
            for (k, v) in &model {
                prop_assert_eq!(set.get(*k), Some(*v));
            }
            prop_assert_eq!(set.get(12345678901234567890123), model.get(&12345678901234567890123).copied());
        }
    }
}
