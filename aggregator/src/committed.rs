//! The committed id set: a small hash table for the ids committed lately ([`IdSet`]) in
//! front of one sorted run that holds the rest at about 20 bytes an id.
//!
//! # Layout of the run
//! Entries are sorted by key and stored column by column. A key's top 16 bits are not
//! stored: they are the entry's bucket, and `starts` (2^16 + 1 offsets, 256 KiB) says where
//! each bucket begins. Per entry the run stores the other 112 bits of the key (`mid`: the
//! next 32, `low`: the 16 after those, `lo`: the low 64), the low 32 bits of the payload hash
//! and the minute JetStream received the id, 16 bits counted from the run's `base` minute
//! (45 days of span; a wider span is stored as 32-bit minutes): 4 + 2 + 8 + 4 + 2 = 20
//! bytes. Keys are uniform hashes, so a lookup starts in its bucket where `mid` predicts
//! (interpolation) and is usually one read away from the answer.
//!
//! # Growth
//! New ids go to the hash table; when it holds `max(MERGE_MIN, run / 16)` ids they are sorted
//! and merged into the run in place (one pass of `memmove` from the end, the run's columns
//! grown by exactly what is added), and the table is cleared (its capacity kept). The table
//! therefore holds at most a sixteenth of the ids (at 25 bytes a slot, 53% to 80% full: 2 to
//! 3 bytes per id of the whole set), and a merge costs the size of the run once for every
//! sixteenth of it that is added. Below `MERGE_MIN` ids everything stays in the hash table
//! (at most a few MB), where the run's fixed 256 KiB of offsets would not pay.
//!
//! # Expiry
//! By whole minutes of received time, the slices the per-customer limits count (`limits.rs`):
//! [`Committed::expire_before`] forgets the ids received before the minute of its cutoff
//! (the consumer passes whole minutes, so that is the cutoff itself). Both levels are
//! filtered in place.
//!
//! # Identity
//! Nothing of the key is lost: 16 bits are the bucket, 112 are stored, and a lookup compares
//! all 128. What the set can confuse is two identities whose xxh3-128 hashes are equal, see
//! `dedup.rs`.

use crate::idset::IdSet;
use crate::limits::SLICE_SECS;

/// Bits of the key given by the bucket instead of being stored.
const BUCKET_BITS: u32 = 16;
const BUCKETS: usize = 1 << BUCKET_BITS;
/// The hash table takes up to this many ids before anything is merged into the run.
pub const MERGE_MIN: usize = 1 << 16;
/// Merge when the table holds a `1 / MERGE_SHARE` of what the run holds.
const MERGE_SHARE: usize = 16;

/// The minute of a received time (seconds).
fn minute(secs: u32) -> u32 {
    secs / SLICE_SECS
}

/// Key 0 is stored as key 1, as the hash table does (its empty slots are zeros), so both
/// levels hold the same key for it.
fn storable(key: u128) -> u128 {
    key.max(1)
}

/// A key split as the run stores it: (bucket, mid, low, lo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Parts {
    bucket: usize,
    mid: u32,
    low: u16,
    lo: u64,
}

impl Parts {
    fn of(key: u128) -> Parts {
        let hi = (key >> 64) as u64;
        Parts {
            bucket: (hi >> (64 - BUCKET_BITS)) as usize,
            mid: (hi >> 16) as u32,
            low: hi as u16,
            lo: key as u64,
        }
    }
}

/// The run's received minutes: 16 bits from a base while the span fits, else 32 bits.
#[derive(Debug)]
enum Minutes {
    Narrow { base: u32, rel: Vec<u16> },
    Wide(Vec<u32>),
}

impl Default for Minutes {
    fn default() -> Self {
        Minutes::Narrow {
            base: 0,
            rel: Vec::new(),
        }
    }
}

impl Minutes {
    fn get(&self, i: usize) -> u32 {
        match self {
            Minutes::Narrow { base, rel } => base + u32::from(rel[i]),
            Minutes::Wide(v) => v[i],
        }
    }

    /// The smallest and largest minute held, if any.
    fn range(&self) -> Option<(u32, u32)> {
        match self {
            Minutes::Narrow { base, rel } => {
                let (lo, hi) = (rel.iter().min()?, rel.iter().max()?);
                Some((base + u32::from(*lo), base + u32::from(*hi)))
            }
            Minutes::Wide(v) => Some((*v.iter().min()?, *v.iter().max()?)),
        }
    }

    /// Makes every minute in `from..=to` storable, besides those held: rebases or widens.
    fn make_room(&mut self, from: u32, to: u32) {
        let Minutes::Narrow { base, rel } = self else {
            return;
        };
        if rel.is_empty() {
            *base = from;
        }
        if from >= *base && to - *base <= u32::from(u16::MAX) {
            return;
        }
        let (lo, hi) = match self.range() {
            Some((lo, hi)) => (lo.min(from), hi.max(to)),
            None => (from, to),
        };
        let all: Vec<u32> = self.to_wide();
        *self = if hi - lo <= u32::from(u16::MAX) {
            Minutes::Narrow {
                base: lo,
                rel: all.into_iter().map(|m| (m - lo) as u16).collect(),
            }
        } else {
            Minutes::Wide(all)
        };
    }

    /// Back to 16 bits once the span allows (after expiry).
    fn narrow(&mut self) {
        if let Minutes::Wide(v) = self {
            if let (Some(&lo), Some(&hi)) = (v.iter().min(), v.iter().max()) {
                if hi - lo <= u32::from(u16::MAX) {
                    let rel = v.iter().map(|m| (m - lo) as u16).collect();
                    *self = Minutes::Narrow { base: lo, rel };
                }
            }
        }
    }

    fn to_wide(&self) -> Vec<u32> {
        match self {
            Minutes::Narrow { base, rel } => rel.iter().map(|r| base + u32::from(*r)).collect(),
            Minutes::Wide(v) => v.clone(),
        }
    }

    /// Sets entry `i`, whose minute must be storable ([`Minutes::make_room`]).
    fn set(&mut self, i: usize, m: u32) {
        match self {
            Minutes::Narrow { base, rel } => rel[i] = (m - *base) as u16,
            Minutes::Wide(v) => v[i] = m,
        }
    }

    fn insert_sorted(&mut self, added: &[u32], at: &[usize]) {
        match self {
            Minutes::Narrow { base, rel } => {
                let b = *base;
                let added: Vec<u16> = added.iter().map(|m| (m - b) as u16).collect();
                insert_at(rel, &added, at);
            }
            Minutes::Wide(v) => insert_at(v, added, at),
        }
    }

    fn retain(&mut self, keep: &[bool]) {
        match self {
            Minutes::Narrow { rel, .. } => retain_by(rel, keep),
            Minutes::Wide(v) => retain_by(v, keep),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Minutes::Narrow { rel, .. } => rel.capacity() * 2,
            Minutes::Wide(v) => v.capacity() * 4,
        }
    }

    fn shrink(&mut self) {
        match self {
            Minutes::Narrow { rel, .. } => rel.shrink_to_fit(),
            Minutes::Wide(v) => v.shrink_to_fit(),
        }
    }
}

/// Inserts `added[j]` so that it lands at `at[j] + j` (`at` non-decreasing, each at most
/// `v.len()`): one `memmove` per added element, from the end, with `v` grown exactly.
fn insert_at<T: Copy + Default>(v: &mut Vec<T>, added: &[T], at: &[usize]) {
    debug_assert_eq!(added.len(), at.len());
    let old = v.len();
    v.reserve_exact(added.len());
    v.resize(old + added.len(), T::default());
    let mut end = old;
    for j in (0..added.len()).rev() {
        let p = at[j];
        v.copy_within(p..end, p + j + 1);
        v[p + j] = added[j];
        end = p;
    }
}

/// Keeps the elements whose `keep` is true, in order.
fn retain_by<T: Copy>(v: &mut Vec<T>, keep: &[bool]) {
    let mut w = 0;
    for i in 0..v.len() {
        if keep[i] {
            v[w] = v[i];
            w += 1;
        }
    }
    v.truncate(w);
}

/// Ids sorted by key, 20 bytes each plus 256 KiB of bucket offsets (module docs).
#[derive(Debug, Default)]
struct IdRun {
    /// Entries of bucket `b` are `starts[b]..starts[b + 1]`; empty while the run is.
    starts: Vec<u32>,
    mid: Vec<u32>,
    low: Vec<u16>,
    lo: Vec<u64>,
    payload: Vec<u32>,
    minutes: Minutes,
}

impl IdRun {
    fn len(&self) -> usize {
        self.lo.len()
    }

    fn bytes(&self) -> usize {
        self.starts.capacity() * 4
            + self.mid.capacity() * 4
            + self.low.capacity() * 2
            + self.lo.capacity() * 8
            + self.payload.capacity() * 4
            + self.minutes.bytes()
    }

    /// The first entry of `k`'s bucket not below `k`, and where the bucket ends.
    fn lower_bound(&self, k: &Parts) -> (usize, usize) {
        let (s, e) = (
            self.starts[k.bucket] as usize,
            self.starts[k.bucket + 1] as usize,
        );
        if s == e {
            return (s, e);
        }
        let below = |i: usize| (self.mid[i], self.low[i], self.lo[i]) < (k.mid, k.low, k.lo);
        // uniform keys: the rank of `mid` in the bucket predicts the position
        let mut i = s + ((u64::from(k.mid) * (e - s) as u64) >> 32) as usize;
        if below(i) {
            i += 1;
            while i < e && below(i) {
                i += 1;
            }
        } else {
            while i > s && !below(i - 1) {
                i -= 1;
            }
        }
        (i, e)
    }

    fn find(&self, key: u128) -> Option<usize> {
        if self.starts.is_empty() {
            return None;
        }
        let k = Parts::of(key);
        let (i, e) = self.lower_bound(&k);
        (i < e && self.mid[i] == k.mid && self.low[i] == k.low && self.lo[i] == k.lo).then_some(i)
    }

    /// Adds `added`, sorted by key, none of them held yet: (key, payload, minute).
    fn merge(&mut self, added: &[(u128, u32, u32)]) {
        if added.is_empty() {
            return;
        }
        if self.starts.is_empty() {
            self.starts = vec![0; BUCKETS + 1];
        }
        let parts: Vec<Parts> = added.iter().map(|a| Parts::of(a.0)).collect();
        let at: Vec<usize> = parts.iter().map(|k| self.lower_bound(k).0).collect();
        let (from, to) = added
            .iter()
            .fold((u32::MAX, 0), |(lo, hi), a| (lo.min(a.2), hi.max(a.2)));
        self.minutes.make_room(from, to);
        let mids: Vec<u32> = parts.iter().map(|k| k.mid).collect();
        insert_at(&mut self.mid, &mids, &at);
        let lows: Vec<u16> = parts.iter().map(|k| k.low).collect();
        insert_at(&mut self.low, &lows, &at);
        let los: Vec<u64> = parts.iter().map(|k| k.lo).collect();
        insert_at(&mut self.lo, &los, &at);
        let payloads: Vec<u32> = added.iter().map(|a| a.1).collect();
        insert_at(&mut self.payload, &payloads, &at);
        let minutes: Vec<u32> = added.iter().map(|a| a.2).collect();
        self.minutes.insert_sorted(&minutes, &at);
        // every bucket starts later by the added entries of the buckets before it
        let mut shift = 0u32;
        let mut j = 0;
        for b in 0..BUCKETS {
            self.starts[b] += shift;
            while j < parts.len() && parts[j].bucket == b {
                shift += 1;
                j += 1;
            }
        }
        self.starts[BUCKETS] += shift;
        assert!(
            u32::try_from(self.len()).is_ok(),
            "the run holds at most u32::MAX ids"
        );
    }

    /// Forgets the entries received before minute `cutoff`; returns how many.
    fn expire_before(&mut self, cutoff: u32) -> usize {
        let n = self.len();
        if n == 0 {
            return 0;
        }
        let keep: Vec<bool> = (0..n).map(|i| self.minutes.get(i) >= cutoff).collect();
        let kept = keep.iter().filter(|k| **k).count();
        if kept == n {
            return 0;
        }
        if kept == 0 {
            *self = IdRun::default();
            return n;
        }
        let mut removed = 0u32;
        for b in 0..BUCKETS {
            let (s, e) = (self.starts[b] as usize, self.starts[b + 1] as usize);
            self.starts[b] -= removed;
            removed += keep[s..e].iter().filter(|k| !**k).count() as u32;
        }
        self.starts[BUCKETS] -= removed;
        retain_by(&mut self.mid, &keep);
        retain_by(&mut self.low, &keep);
        retain_by(&mut self.lo, &keep);
        retain_by(&mut self.payload, &keep);
        self.minutes.retain(&keep);
        self.minutes.narrow();
        if self.mid.capacity() > 2 * kept {
            self.mid.shrink_to_fit();
            self.low.shrink_to_fit();
            self.lo.shrink_to_fit();
            self.payload.shrink_to_fit();
            self.minutes.shrink();
        }
        n - kept
    }
}

/// Committed ids: key -> (low 32 bits of the payload hash, received minute).
#[derive(Debug)]
pub struct Committed {
    recent: IdSet,
    run: IdRun,
    merge_min: usize,
}

impl Default for Committed {
    fn default() -> Self {
        Committed::with_merge_min(MERGE_MIN)
    }
}

impl Committed {
    pub fn new() -> Self {
        Committed::default()
    }

    /// A set whose hash table takes `merge_min` ids before merging (tests use small ones).
    pub fn with_merge_min(merge_min: usize) -> Self {
        Committed {
            recent: IdSet::new(),
            run: IdRun::default(),
            merge_min: merge_min.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.recent.len() + self.run.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of both levels (capacity, not length).
    pub fn bytes(&self) -> usize {
        self.recent.bytes() + self.run.bytes()
    }

    /// The payload hash (low 32 bits) and received minute of `key`.
    pub fn get(&self, key: u128) -> Option<(u32, u32)> {
        let key = storable(key);
        if let Some((payload, at)) = self.recent.get(key) {
            return Some((payload, minute(at)));
        }
        let i = self.run.find(key)?;
        Some((self.run.payload[i], self.run.minutes.get(i)))
    }

    /// Inserts `key`, or overwrites what it holds; whether it was new.
    pub fn insert(&mut self, key: u128, payload: u32, at_secs: u32) -> bool {
        let key = storable(key);
        if let Some(i) = self.run.find(key) {
            let m = minute(at_secs);
            self.run.minutes.make_room(m, m);
            self.run.payload[i] = payload;
            self.run.minutes.set(i, m);
            return false;
        }
        let new = self.recent.get(key).is_none();
        self.recent.insert(key, payload, at_secs);
        if self.recent.len() >= self.merge_min.max(self.run.len() / MERGE_SHARE) {
            self.merge();
        }
        new
    }

    /// Moves every id of the hash table into the run.
    fn merge(&mut self) {
        let mut added: Vec<(u128, u32, u32)> = self
            .recent
            .drain()
            .into_iter()
            .map(|(k, p, at)| (k, p, minute(at)))
            .collect();
        added.sort_unstable_by_key(|a| a.0);
        self.run.merge(&added);
    }

    /// Forgets the ids received before the minute of `cutoff_secs`; returns how many.
    pub fn expire_before(&mut self, cutoff_secs: u32) -> usize {
        let cutoff = minute(cutoff_secs);
        self.recent.retain_by_time(|at| minute(at) >= cutoff) + self.run.expire_before(cutoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Keys built from few values per part, so that buckets, `mid`s and `low`s are shared and
    /// every branch of the search runs; now and then a uniform one.
    fn key() -> impl Strategy<Value = u128> {
        prop_oneof![
            4 => (0u128..3, 0u128..3, 0u128..3, 0u128..6).prop_map(|(b, m, l, lo)| {
                (b << 112) | (m << 80) | (l << 64) | lo
            }),
            1 => any::<u128>(),
        ]
    }

    /// Received times: mostly within hours, some months later (16-bit minutes overflow).
    fn received() -> impl Strategy<Value = u32> {
        prop_oneof![
            4 => 1_000_000u32..1_020_000,
            1 => 1_000_000u32 + 5_000_000..1_000_000 + 5_020_000,
            1 => any::<u32>(),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128, u32, u32),
        Get(u128),
        Expire(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (key(), any::<u32>(), received()).prop_map(|(k, p, t)| Op::Insert(k, p, t)),
            4 => key().prop_map(Op::Get),
            1 => received().prop_map(Op::Expire),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Insert, lookup and expiry agree with a HashMap after every operation.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec(op(), 0..400), merge_min in 1usize..12) {
            let mut set = Committed::with_merge_min(merge_min);
            let mut model: HashMap<u128, (u32, u32)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, p, t) => {
                        let new = model.insert(k.max(1), (p, t / 60)).is_none();
                        prop_assert_eq!(set.insert(k, p, t), new);
                    }
                    Op::Get(k) => prop_assert_eq!(set.get(k), model.get(&k.max(1)).copied()),
                    Op::Expire(c) => {
                        let before = model.len();
                        model.retain(|_, v| v.1 >= c / 60);
                        prop_assert_eq!(set.expire_before(c), before - model.len());
                    }
                }
                prop_assert_eq!(set.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(set.get(*k), Some(*v));
            }
        }
    }

    #[test]
    fn many_uniform_keys_are_found_and_others_not() {
        let mut set = Committed::with_merge_min(1000);
        let key = |i: u64| xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes());
        for i in 0..200_000u64 {
            assert!(set.insert(key(i), i as u32, 60 * (i as u32 / 1000)));
        }
        assert!(set.run.len() > 150_000, "{}", set.run.len());
        for i in 0..200_000u64 {
            assert_eq!(set.get(key(i)), Some((i as u32, i as u32 / 1000)), "{i}");
        }
        for i in 200_000..300_000u64 {
            assert_eq!(set.get(key(i)), None);
        }
        assert!(!set.insert(key(7), 1, 0));
        assert_eq!(set.get(key(7)), Some((1, 0)));
        // minutes 0..200: everything before minute 100 goes, minute 100 stays
        assert_eq!(set.expire_before(100 * 60 + 59), 100_000);
        assert_eq!(set.len(), 100_000);
        assert_eq!(set.get(key(7)), None);
        assert_eq!(set.get(key(100_000)), Some((100_000, 100)));
        assert_eq!(set.expire_before(u32::MAX), 100_000);
        assert!(set.is_empty());
        assert_eq!(set.run.bytes(), 0);
    }

    #[test]
    fn minutes_widen_and_narrow_again() {
        let mut set = Committed::with_merge_min(1);
        set.insert(5, 1, 600);
        assert!(matches!(set.run.minutes, Minutes::Narrow { base: 10, .. }));
        // before the base: rebased
        set.insert(6, 2, 60);
        assert!(matches!(set.run.minutes, Minutes::Narrow { base: 1, .. }));
        // 70,000 minutes later: 32 bits
        set.insert(7, 3, 60 * 70_001);
        assert!(matches!(set.run.minutes, Minutes::Wide(_)));
        assert_eq!(set.get(5), Some((1, 10)));
        assert_eq!(set.get(6), Some((2, 1)));
        assert_eq!(set.get(7), Some((3, 70_001)));
        // an overwrite far back widens nothing more and keeps every time
        set.insert(5, 4, 0);
        assert_eq!(set.get(5), Some((4, 0)));
        assert_eq!(set.expire_before(60 * 2), 2);
        assert!(matches!(
            set.run.minutes,
            Minutes::Narrow { base: 70_001, .. }
        ));
        assert_eq!(set.get(7), Some((3, 70_001)));
    }

    #[test]
    fn insert_at_places_each_added_element() {
        let mut v = vec![10, 20, 30];
        insert_at(&mut v, &[5, 15, 16, 40], &[0, 1, 1, 3]);
        assert_eq!(v, [5, 10, 15, 16, 20, 30, 40]);
    }
}
