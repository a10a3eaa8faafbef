//! The partition lease: one active instance per partition of a stage (the aggregator's
//! partitions of the usage stream, the spend deciders of the same partitions), and the
//! compare-and-set that fences every other.
//!
//! A key in a NATS KV bucket (the aggregator's: `<stream>_AGGREGATORS`, a key per consumer,
//! that is per partition) holds who owns the partition and what it is doing. Every write is a
//! compare-and-set on the key's revision, so the writes of all instances form one order, and
//! a write from an instance that lost the partition fails (JetStream answers "wrong last
//! sequence"): the instance is *fenced* and stops without acknowledging anything.
//!
//! The holder writes, for each batch (and each seal), an *intent* naming the batch id before
//! any row of it reaches ClickHouse, and a *commit* after all of them did. So at any moment
//! at most one batch id can be unfinished, and the key names it. An instance that takes the
//! partition over (after the holder stopped renewing for `ttl`, or released it) first wins
//! the key with a compare-and-set, which fences the old holder, then aborts the unfinished
//! batch (`usage_aborts`): readers never count its rows, even ones a paused old holder
//! writes later. A batch whose commit was written counts; its ack may be lost, and the
//! messages come back as duplicates of the rebuilt dedup set.
//!
//! The holder renews the key every `ttl / 4` (a write like any other), so a process that is
//! paused (SIGSTOP, a long GC, a frozen VM) loses the partition `ttl` after its last renewal,
//! and finds itself fenced when it resumes. Standby instances poll the key; they take over
//! once its revision has not moved for `ttl` of their own monotonic clock (no clock is shared)
//! or at once when the holder released it on a clean stop.
//!
//! The revision of the key after an intent ([`Lease::intent`]) is the op's *sequence*: it
//! grows with every write of every instance, so the ops of a partition are numbered in the
//! order they were started, across takeovers (the aggregator writes it with a batch's rows as
//! `bseq`, so a reader can take "every batch committed up to here" from storage and the rest
//! from the live feed).
//!
//! This module decides nothing about rows; it never talks to ClickHouse.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::shutdown::Shutdown;

/// Where the lease lives and how long it lasts.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// KV bucket (the aggregator's: `<usage stream>_AGGREGATORS`).
    pub bucket: String,
    /// Key: the partition's name (the aggregator's: its durable consumer name).
    pub key: String,
    /// A holder that has not renewed for this long has lost the partition.
    pub ttl: Duration,
    /// Replicas of the bucket (a NATS cluster: 3).
    pub replicas: usize,
    /// The stage's metric prefix: `<prefix>_lease_acquired_total`, `<prefix>_fenced_total`.
    pub metrics_prefix: &'static str,
}

mod metrics {
    use ::metrics::counter;

    /// This instance took a partition (at start, or over from a silent holder).
    pub fn lease_acquired(prefix: &str) {
        counter!(format!("{prefix}_lease_acquired_total")).increment(1);
    }

    /// This instance found its partition taken over and stopped.
    pub fn fenced(prefix: &str) {
        counter!(format!("{prefix}_fenced_total")).increment(1);
    }
}

/// What the key says. Every value written carries the holder and a sequence number of its
/// own, so a write whose answer was lost can be recognised when the key is read again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseValue {
    /// Held, nothing in flight.
    Held { holder: String, seq: u64 },
    /// Held, and batch (or seal) `op` may have rows in ClickHouse; `aborts` are earlier
    /// attempts whose abort records may not be durable yet.
    Intent {
        holder: String,
        seq: u64,
        op: String,
        aborts: Vec<String>,
    },
    /// Given up on a clean stop: the next instance takes over at once.
    Released { holder: String, seq: u64 },
}

impl LeaseValue {
    fn holder(&self) -> &str {
        match self {
            LeaseValue::Held { holder, .. }
            | LeaseValue::Intent { holder, .. }
            | LeaseValue::Released { holder, .. } => holder,
        }
    }

    /// The ids a takeover must abort: the batch in flight and its unrecorded predecessors.
    pub fn unfinished(&self) -> Vec<String> {
        match self {
            LeaseValue::Intent { op, aborts, .. } => {
                let mut ids = aborts.clone();
                ids.push(op.clone());
                ids
            }
            _ => Vec::new(),
        }
    }

    fn to_bytes(&self) -> Bytes {
        // a value of strings and integers always serializes
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The value of a lease key (`None`: not a lease value).
    pub fn parse(bytes: &[u8]) -> Option<LeaseValue> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Why the lease could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another instance took the partition over: stop, acknowledge nothing.
    #[error("fenced: another instance took partition {key} over")]
    Fenced { key: String },
    #[error("lease bucket {bucket}: {detail}")]
    Nats { bucket: String, detail: String },
    #[error("shut down while waiting for the lease")]
    Shutdown,
}

struct Held {
    revision: u64,
    seq: u64,
    /// What this instance last wrote (a renewal writes it again).
    value: LeaseValue,
}

/// The partition, held by this instance until it is fenced or released.
pub struct Lease {
    kv: kv::Store,
    cfg: LeaseConfig,
    holder: String,
    held: Mutex<Held>,
    /// Cancelled when a write finds the key moved: this instance no longer owns the partition.
    fenced: Shutdown,
}

/// What the previous holder left unfinished, to abort before consuming.
#[derive(Debug, Clone, Default)]
pub struct Takeover {
    pub unfinished: Vec<String>,
    /// The previous holder, if any (for the log).
    pub previous: Option<String>,
}

/// Opens (creating if needed) the lease bucket.
pub async fn bucket(js: &jetstream::Context, cfg: &LeaseConfig) -> Result<kv::Store, LeaseError> {
    crate::streams::kv_bucket(js, &cfg.bucket, cfg.replicas)
        .await
        .map_err(|e| LeaseError::Nats {
            bucket: cfg.bucket.clone(),
            detail: e.to_string(),
        })
}

impl Lease {
    /// Waits until the partition can be taken (free, released, or its holder silent for
    /// `ttl`), takes it with a compare-and-set that fences the previous holder, and returns
    /// what that holder left unfinished. Stays a standby until then.
    pub async fn acquire(
        js: &jetstream::Context,
        cfg: LeaseConfig,
        holder: String,
        shutdown: &Shutdown,
    ) -> Result<(Lease, Takeover), LeaseError> {
        let kv = bucket(js, &cfg).await?;
        let poll = (cfg.ttl / 4).max(Duration::from_millis(50));
        let mut seen: Option<(u64, tokio::time::Instant)> = None;
        loop {
            match Self::try_take(&kv, &cfg, &holder, &mut seen).await {
                Ok(Some((revision, takeover))) => {
                    let value = LeaseValue::Held {
                        holder: holder.clone(),
                        seq: 0,
                    };
                    metrics::lease_acquired(cfg.metrics_prefix);
                    let lease = Lease {
                        kv,
                        cfg,
                        holder,
                        held: Mutex::new(Held {
                            revision,
                            seq: 0,
                            value,
                        }),
                        fenced: Shutdown::new(),
                    };
                    return Ok((lease, takeover));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the partition lease, retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(LeaseError::Shutdown),
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One look at the key: takes it when it may be taken.
    async fn try_take(
        kv: &kv::Store,
        cfg: &LeaseConfig,
        holder: &str,
        seen: &mut Option<(u64, tokio::time::Instant)>,
    ) -> Result<Option<(u64, Takeover)>, LeaseError> {
        let nats = |e: &dyn std::fmt::Display| LeaseError::Nats {
            bucket: cfg.bucket.clone(),
            detail: e.to_string(),
        };
        let mine = LeaseValue::Held {
            holder: holder.to_owned(),
            seq: 0,
        };
        let entry = kv.entry(&cfg.key).await.map_err(|e| nats(&e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            // free: create it (fails if another instance created it first)
            return match kv.create(&cfg.key, mine.to_bytes()).await {
                Ok(revision) => Ok(Some((revision, Takeover::default()))),
                Err(_) => Ok(None),
            };
        };
        let value = LeaseValue::parse(&entry.value);
        let now = tokio::time::Instant::now();
        let silent_since = match *seen {
            Some((rev, since)) if rev == entry.revision => since,
            _ => {
                *seen = Some((entry.revision, now));
                now
            }
        };
        let released = matches!(value, Some(LeaseValue::Released { .. }));
        if !released && now.duration_since(silent_since) < cfg.ttl {
            return Ok(None);
        }
        match kv.update(&cfg.key, mine.to_bytes(), entry.revision).await {
            Ok(revision) => Ok(Some((
                revision,
                Takeover {
                    unfinished: value
                        .as_ref()
                        .map(LeaseValue::unfinished)
                        .unwrap_or_default(),
                    previous: value.map(|v| v.holder().to_owned()),
                },
            ))),
            // someone else moved it first: look again
            Err(_) => Ok(None),
        }
    }

    /// This instance's id in the key.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// A token cancelled when this instance is found fenced.
    pub fn fenced(&self) -> Shutdown {
        self.fenced.clone()
    }

    /// Records that `op` may write rows from now on (and that `aborts` must be aborted if
    /// this instance does not finish); returns the op's sequence (the key's revision after
    /// the intent). Fails with [`LeaseError::Fenced`] if the partition was taken over.
    pub async fn intent(&self, op: &str, aborts: &[String]) -> Result<u64, LeaseError> {
        self.write(|holder, seq| LeaseValue::Intent {
            holder,
            seq,
            op: op.to_owned(),
            aborts: aborts.to_vec(),
        })
        .await
    }

    /// Records that the op in flight finished (its rows count).
    pub async fn commit(&self) -> Result<(), LeaseError> {
        self.write(|holder, seq| LeaseValue::Held { holder, seq })
            .await
            .map(|_| ())
    }

    /// Renews the lease (the same value again, a new revision).
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let mut held = self.held.lock().await;
        let same = held.value.clone();
        self.cas(&mut held, same).await
    }

    /// Gives the partition up on a clean stop, so the next instance need not wait for `ttl`.
    /// Only when nothing is in flight (the last write was a commit).
    pub async fn release(&self) {
        let r = self
            .write(|holder, seq| LeaseValue::Released { holder, seq })
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "releasing the lease");
        }
    }

    /// Keeps renewing until `stop` or until fenced (which cancels [`Lease::fenced`]).
    pub async fn keep_renewed(&self, stop: Shutdown) {
        let every = (self.cfg.ttl / 4).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.fenced.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.renew().await {
                Ok(()) => {}
                Err(LeaseError::Fenced { .. }) => return,
                Err(e) => tracing::warn!(error = %e, "renewing the partition lease"),
            }
        }
    }

    /// Writes the next value; returns the key's revision after it.
    async fn write(
        &self,
        value: impl FnOnce(String, u64) -> LeaseValue,
    ) -> Result<u64, LeaseError> {
        let mut held = self.held.lock().await;
        held.seq += 1;
        let next = value(self.holder.clone(), held.seq);
        self.cas(&mut held, next).await?;
        Ok(held.revision)
    }

    /// Compare-and-set of `next` at the held revision. An answer lost in transit is resolved
    /// by reading the key: our own value there means it was written.
    async fn cas(&self, held: &mut Held, next: LeaseValue) -> Result<(), LeaseError> {
        let bytes = next.to_bytes();
        for _ in 0..5 {
            match self
                .kv
                .update(&self.cfg.key, bytes.clone(), held.revision)
                .await
            {
                Ok(revision) => {
                    held.revision = revision;
                    held.value = next;
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    return Err(self.fence());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease write in doubt, reading the key");
                    match self.kv.entry(&self.cfg.key).await {
                        Ok(Some(entry)) if entry.value == bytes => {
                            held.revision = entry.revision;
                            held.value = next;
                            return Ok(());
                        }
                        Ok(Some(entry)) if entry.revision != held.revision => {
                            return Err(self.fence());
                        }
                        Ok(None) => return Err(self.fence()),
                        // unchanged (or unreadable): the write did not happen, try again
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }
        Err(LeaseError::Nats {
            bucket: self.cfg.bucket.clone(),
            detail: "the lease could not be written after 5 attempts".into(),
        })
    }

    fn fence(&self) -> LeaseError {
        if !self.fenced.is_cancelled() {
            tracing::error!(key = %self.cfg.key, holder = %self.holder, "fenced: another instance took the partition over");
            metrics::fenced(self.cfg.metrics_prefix);
            self.fenced.cancel();
        }
        LeaseError::Fenced {
            key: self.cfg.key.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_leaves_its_op_and_its_pending_aborts_unfinished() {
        let v = LeaseValue::Intent {
            holder: "h".into(),
            seq: 3,
            op: "b3".into(),
            aborts: vec!["b1".into(), "b2".into()],
        };
        assert_eq!(v.unfinished(), vec!["b1", "b2", "b3"]);
        let held = LeaseValue::Held {
            holder: "h".into(),
            seq: 4,
        };
        assert!(held.unfinished().is_empty());
        assert_eq!(LeaseValue::parse(&v.to_bytes()), Some(v));
        assert_eq!(LeaseValue::parse(b"junk"), None);
    }
}
