//! Gapless, sequential invoice numbers per issuer, assigned exactly once, and the frozen
//! documents of finalized invoices, both in a NATS KV bucket.
//!
//! Keys (bucket `[invoicer] numbers_bucket`):
//! - `counter.<issuer>`: `{"last": n, "ids": [...]}`: the last number given, and the invoices
//!   that got the numbers `n - len + 1 ..= n` in the batch that set it. Changed only by
//!   compare-and-set on its revision (`update`).
//! - `number.<invoice_id>`: the invoice's number, written create-only.
//! - `invoice.<invoice_id>`: the finalized document (JSON, with its number), create-only: the
//!   first finalizer's document is the invoice forever; a racing or later one reads it back.
//! - `owner`: the ClickHouse database whose invoices the bucket numbers, create-only
//!   ([`Numbers::open_for`]): the first invoicer to open a bucket claims it, and an invoicer of
//!   another database (a test or staging database on production's NATS) is refused instead
//!   of advancing production's gapless counter. The bucket's name comes from
//!   `nats.namespace` (`<NAMESPACE>_INVOICE_NUMBERS`).
//!
//! Why gapless and exactly once: an assigner first completes the `number.` keys of the batch
//! the counter names (a crash between the counter update and those writes leaves them for
//! the next assigner), then re-reads the numbers of its own invoices, and only for those
//! still without one moves the counter forward by compare-and-set, naming them. A lost race
//! retries from the start. So every number the counter passed belongs to exactly one invoice
//! and no invoice is named by two batches. This module never deletes or overwrites a key.
//!
//! Round trips saved without changing the argument: the counter batch an assigner completed
//! itself (its own update, or one it completed) is not re-read while the counter keeps that
//! revision (keys are never deleted, so a completed batch stays complete); the `number.` keys
//! of a batch an assigner just named are created without reading them first (a racing
//! completer writes the same numbers, create-only); requests go out [`IN_FLIGHT`] at a time
//! as a window, not in lockstep chunks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::invoice::Invoice;

/// The most compare-and-set attempts for one batch before giving up.
const MAX_ATTEMPTS: usize = 64;
/// Invoices numbered per counter update (bounds the counter's value size).
const BATCH_MAX: usize = 2_000;
/// KV requests in flight at once.
const IN_FLIGHT: usize = 256;

/// Why numbers could not be assigned or documents frozen.
#[derive(Debug, thiserror::Error)]
pub enum NumberingError {
    #[error("nats kv bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
    #[error("nats kv key {key}: {message}")]
    Kv { key: String, message: String },
    #[error("nats kv key {key}: stored value is not valid: {message}")]
    Corrupt { key: String, message: String },
    #[error("issuer {issuer}: the counter stayed contended after {attempts} attempts")]
    Contended { issuer: String, attempts: usize },
    #[error("issuer id {0:?}: use 1 to 64 of [A-Za-z0-9_-]")]
    BadIssuer(String),
    #[error(
        "nats kv bucket {bucket} numbers the invoices of database {owner}, not of {database}: \
         give each database its own bucket (setting `nats.namespace`, or `invoicer.numbers_bucket`)"
    )]
    Owner {
        bucket: String,
        owner: String,
        database: String,
    },
}

/// The counter's value.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    last: u64,
    ids: Vec<String>,
}

/// Numbers and frozen documents for one bucket.
#[derive(Clone)]
pub struct Numbers {
    kv: kv::Store,
    /// The counter (key, revision) whose batch this process knows complete: its `complete`
    /// is skipped while the counter keeps that revision.
    completed: Arc<Mutex<Option<(String, u64)>>>,
}

impl Numbers {
    /// Opens (or creates, with one replica) the bucket (`tally_platform::streams::kv_bucket`).
    pub async fn open(client: async_nats::Client, bucket: &str) -> Result<Self, NumberingError> {
        Numbers::open_replicated(client, bucket, 1).await
    }

    /// Opens the bucket for the invoices of ClickHouse database `database`: creates it (with
    /// `replicas` copies) if it does not exist, claims it for `database` if no database has
    /// yet, and refuses it if it numbers another database's invoices ([`NumberingError::Owner`]).
    pub async fn open_for(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
        database: &str,
    ) -> Result<Self, NumberingError> {
        let numbers = Numbers::open_replicated(client, bucket, replicas).await?;
        let kv_err = |message: String| NumberingError::Kv {
            key: "owner".into(),
            message,
        };
        match numbers.kv.create("owner", database.to_owned().into()).await {
            Ok(_) => return Ok(numbers),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(kv_err(e.to_string())),
        }
        let owner = numbers
            .kv
            .get("owner")
            .await
            .map_err(|e| kv_err(e.to_string()))?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        if owner == database {
            Ok(numbers)
        } else {
            Err(NumberingError::Owner {
                bucket: bucket.to_owned(),
                owner,
                database: database.to_owned(),
            })
        }
    }

    /// Opens the bucket, creating it with `replicas` copies if it does not exist (`nats.replicas`:
    /// 3 on a NATS cluster, so numbering survives the loss of a node).
    pub async fn open_replicated(
        client: async_nats::Client,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, NumberingError> {
        let js = jetstream::new(client);
        let kv = tally_platform::streams::kv_bucket(&js, bucket, replicas)
            .await
            .map_err(|e| NumberingError::Bucket {
                bucket: bucket.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Numbers {
            kv,
            completed: Arc::default(),
        })
    }

    /// The numbers of `ids` (invoices of `issuer`), assigning the next ones in order of
    /// `ids` to those that have none yet.
    pub async fn assign(
        &self,
        issuer: &str,
        ids: &[String],
    ) -> Result<HashMap<String, u64>, NumberingError> {
        check_issuer(issuer)?;
        // each batch reads the numbers its ids already have after completing the counter's
        // batch (the read that counts), so no read before
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_MAX) {
            out.extend(self.assign_batch(issuer, chunk).await?);
        }
        Ok(out)
    }

    async fn assign_batch(
        &self,
        issuer: &str,
        ids: &[String],
    ) -> Result<HashMap<String, u64>, NumberingError> {
        let key = format!("counter.{issuer}");
        for attempt in 0..MAX_ATTEMPTS {
            let (counter, revision) = self.counter(&key).await?;
            if !self.is_completed(&key, revision) {
                self.complete(&counter).await?;
                self.set_completed(&key, revision);
            }
            let mut numbers = self.known(ids).await?;
            let todo: Vec<String> = ids
                .iter()
                .filter(|id| !numbers.contains_key(*id))
                .cloned()
                .collect();
            if todo.is_empty() {
                return Ok(numbers);
            }
            let next = Counter {
                last: counter.last + todo.len() as u64,
                ids: todo,
            };
            let body = serde_json::to_vec(&next).unwrap_or_default();
            match self.kv.update(&key, body.into(), revision).await {
                Ok(new_revision) => {
                    // nobody numbered these ids before this update (it would have moved the
                    // counter): create their keys without reading them
                    self.create_numbers(&next, &next.ids).await?;
                    self.set_completed(&key, new_revision);
                    let first = next.last + 1 - next.ids.len() as u64;
                    for (i, id) in next.ids.into_iter().enumerate() {
                        numbers.insert(id, first + i as u64);
                    }
                    return Ok(numbers);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    crate::metrics::numbering_conflict();
                    tokio::time::sleep(Duration::from_millis(1 + (attempt as u64 % 8))).await;
                }
                Err(e) => {
                    return Err(NumberingError::Kv {
                        key,
                        message: e.to_string(),
                    })
                }
            }
        }
        Err(NumberingError::Contended {
            issuer: issuer.to_owned(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The counter and its revision (0: never set, so `update` creates it).
    async fn counter(&self, key: &str) -> Result<(Counter, u64), NumberingError> {
        let entry = self.kv.entry(key).await.map_err(|e| NumberingError::Kv {
            key: key.to_owned(),
            message: e.to_string(),
        })?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let c =
                    serde_json::from_slice(&e.value).map_err(|err| NumberingError::Corrupt {
                        key: key.to_owned(),
                        message: err.to_string(),
                    })?;
                Ok((c, e.revision))
            }
            Some(e) => Ok((Counter::default(), e.revision)),
            None => Ok((Counter::default(), 0)),
        }
    }

    fn is_completed(&self, key: &str, revision: u64) -> bool {
        let done = self.completed.lock().unwrap_or_else(|e| e.into_inner());
        done.as_ref()
            .is_some_and(|(k, r)| k == key && *r == revision && revision != 0)
    }

    fn set_completed(&self, key: &str, revision: u64) {
        *self.completed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((key.to_owned(), revision));
    }

    /// Writes the `number.` keys of the counter's batch that are missing.
    async fn complete(&self, c: &Counter) -> Result<(), NumberingError> {
        if c.ids.is_empty() {
            return Ok(());
        }
        let known = self.known(&c.ids).await?;
        let todo: Vec<String> = c
            .ids
            .iter()
            .filter(|id| !known.contains_key(*id))
            .cloned()
            .collect();
        self.create_numbers(c, &todo).await
    }

    /// Creates the `number.` keys of `ids` (of the counter's batch `c`) with the numbers the
    /// counter gives them; a key that exists already is left as it is.
    async fn create_numbers(&self, c: &Counter, ids: &[String]) -> Result<(), NumberingError> {
        let first = c.last + 1 - c.ids.len() as u64;
        let position: HashMap<&str, u64> = c
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), first + i as u64))
            .collect();
        // collected first: a stream over a borrowing closure makes the future not `Send` for
        // every lifetime (the API serves passes on a multi-threaded runtime)
        let requests: Vec<_> = ids
            .iter()
            .filter_map(|id| {
                let n = *position.get(id.as_str())?;
                let key = format!("number.{id}");
                Some(async move {
                    let r = self.kv.create(&key, n.to_string().into()).await;
                    (key, r)
                })
            })
            .collect();
        let mut results = stream::iter(requests).buffer_unordered(IN_FLIGHT);
        while let Some((key, r)) = results.next().await {
            match r {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(NumberingError::Kv {
                        key,
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// The numbers already stored for `ids`.
    async fn known(&self, ids: &[String]) -> Result<HashMap<String, u64>, NumberingError> {
        let mut out = HashMap::new();
        let requests: Vec<_> = ids
            .iter()
            .map(|id| async move {
                let key = format!("number.{id}");
                (id, self.kv.get(&key).await.map_err(|e| (key, e)))
            })
            .collect();
        let mut results = stream::iter(requests).buffer_unordered(IN_FLIGHT);
        while let Some((id, r)) = results.next().await {
            match r {
                Ok(Some(v)) => {
                    let n = std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| NumberingError::Corrupt {
                            key: format!("number.{id}"),
                            message: "not a number".into(),
                        })?;
                    out.insert(id.clone(), n);
                }
                Ok(None) => {}
                Err((key, e)) => {
                    return Err(NumberingError::Kv {
                        key,
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Freezes each finalized document (create-only) and returns what is frozen: the given
    /// document, or the one an earlier or racing finalizer stored first.
    /// The first document that cannot be frozen fails the whole call (see
    /// [`Numbers::freeze_each`] for one result per document).
    pub async fn freeze(&self, docs: Vec<Invoice>) -> Result<Vec<Invoice>, NumberingError> {
        self.freeze_each(docs)
            .await
            .into_iter()
            .map(|r| r.map_err(|(_, _, e)| e))
            .collect()
    }

    /// [`Numbers::freeze`], one result per document (in order): a document that cannot be
    /// frozen (too large for a KV value, a KV error) fails alone, with its invoice id and
    /// customer.
    pub async fn freeze_each(
        &self,
        docs: Vec<Invoice>,
    ) -> Vec<Result<Invoice, (String, tally_domain::CustomerId, NumberingError)>> {
        let requests: Vec<_> = docs
            .into_iter()
            .map(|doc| async move {
                let (id, customer) = (doc.invoice_id.clone(), doc.customer.clone());
                self.freeze_one(doc).await.map_err(|e| (id, customer, e))
            })
            .collect();
        stream::iter(requests).buffered(IN_FLIGHT).collect().await
    }

    async fn freeze_one(&self, doc: Invoice) -> Result<Invoice, NumberingError> {
        let key = format!("invoice.{}", doc.invoice_id);
        let kv_err = |message: String| NumberingError::Kv {
            key: key.clone(),
            message,
        };
        let body = serde_json::to_vec(&doc).map_err(|e| kv_err(e.to_string()))?;
        match self.kv.create(&key, body.into()).await {
            Ok(_) => Ok(doc),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self
                .frozen(&doc.invoice_id)
                .await?
                .ok_or_else(|| kv_err("exists but cannot be read".into())),
            Err(e) => Err(kv_err(e.to_string())),
        }
    }

    /// The frozen document of a finalized invoice, if any.
    pub async fn frozen(&self, invoice_id: &str) -> Result<Option<Invoice>, NumberingError> {
        let key = format!("invoice.{invoice_id}");
        let v = self.kv.get(&key).await.map_err(|e| NumberingError::Kv {
            key: key.clone(),
            message: e.to_string(),
        })?;
        v.map(|v| {
            serde_json::from_slice(&v).map_err(|e| NumberingError::Corrupt {
                key,
                message: e.to_string(),
            })
        })
        .transpose()
    }
}

/// The printed number: `<prefix><n, at least 6 digits>`, e.g. `INV-000042`.
pub fn format(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:06}")
}

fn check_issuer(issuer: &str) -> Result<(), NumberingError> {
    let ok = (1..=64).contains(&issuer.len())
        && issuer
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(NumberingError::BadIssuer(issuer.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_zero_padded_with_the_prefix() {
        assert_eq!(format("INV-", 42), "INV-000042");
        assert_eq!(format("", 1_234_567), "1234567");
    }

    #[test]
    fn issuer_ids_fit_kv_keys() {
        assert!(check_issuer("tally-eu_1").is_ok());
        assert!(check_issuer("a.b").is_err());
        assert!(check_issuer("").is_err());
    }
}
