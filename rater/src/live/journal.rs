//! The hold journal: every hold a decider places is recorded in JetStream before the agent
//! hears it is allowed, and every release after, so a decider that takes a partition over
//! (after a crash, a kill -9, a stop) restores the holds still live and never lets new
//! requests spend what earlier ones reserved.
//!
//! Stream `<usage stream>_HOLDS` over `<subject_prefix>_holds.>`, one subject per partition,
//! kept a little longer than the longest hold can live. This module records and replays; it
//! decides nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tally_platform::NatsConfig;

use super::book::Hold;

/// Where the journal lives.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub stream: String,
    pub subject_root: String,
    /// Longer than a hold can live (deadline maximum plus grace).
    pub max_age: Duration,
    pub replicas: usize,
}

impl JournalConfig {
    /// The journal of the usage stream `nats`, keeping records `hold_life` plus ten minutes.
    pub fn for_nats(nats: &NatsConfig, hold_life: Duration, replicas: usize) -> JournalConfig {
        JournalConfig {
            stream: format!("{}_HOLDS", nats.stream),
            subject_root: format!("{}_holds", nats.subject_prefix),
            max_age: hold_life + Duration::from_secs(600),
            replicas,
        }
    }

    pub fn subject(&self, part: u32) -> String {
        format!("{}.{part}", self.subject_root)
    }
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    Place { hold: Hold },
    Release { customer: String, hold_id: String },
}

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
#[error("hold journal {stream}: {detail}")]
pub struct JournalError {
    pub stream: String,
    pub detail: String,
}

/// The journal of one partition.
#[derive(Clone)]
pub struct Journal {
    js: jetstream::Context,
    cfg: JournalConfig,
    subject: String,
}

impl Journal {
    /// Declares the stream if needed.
    pub async fn open(
        js: &jetstream::Context,
        cfg: JournalConfig,
        part: u32,
    ) -> Result<Journal, JournalError> {
        js.get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.>", cfg.subject_root)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: cfg.max_age,
            num_replicas: cfg.replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| JournalError {
            stream: cfg.stream.clone(),
            detail: e.to_string(),
        })?;
        Ok(Journal {
            js: js.clone(),
            subject: cfg.subject(part),
            cfg,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError {
            stream: self.cfg.stream.clone(),
            detail: e.to_string(),
        }
    }

    /// Sends a record; the returned future resolves once JetStream stored it.
    pub async fn record(&self, r: &Record) -> Result<PublishAckFuture, JournalError> {
        let body = serde_json::to_vec(r).map_err(|e| self.err(e))?;
        self.js
            .publish(self.subject.clone(), body.into())
            .await
            .map_err(|e| self.err(e))
    }

    /// The holds placed and not released, as the journal holds them now (expired ones
    /// included: the book drops them).
    pub async fn replay(&self) -> Result<Vec<Hold>, JournalError> {
        let mut stream = self
            .js
            .get_stream(&self.cfg.stream)
            .await
            .map_err(|e| self.err(e))?;
        let info = stream.info().await.map_err(|e| self.err(e))?;
        if info.state.messages == 0 {
            return Ok(Vec::new());
        }
        let last = info.state.last_sequence;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| self.err(e))?;
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(Vec::new());
        }
        let mut messages = consumer.messages().await.map_err(|e| self.err(e))?;
        let mut seen = 0u64;
        let mut records = Vec::new();
        while seen < pending {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| self.err("replay timed out"))?;
            let Some(msg) = next else { break };
            let msg = msg.map_err(|e| self.err(e))?;
            seen += 1;
            match serde_json::from_slice::<Record>(&msg.payload) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!(error = %e, "unreadable hold record skipped"),
            }
            let at = msg.info().map(|i| i.stream_sequence).unwrap_or(last);
            if at >= last {
                break;
            }
        }
        Ok(holds_of(records))
    }
}

/// The holds the journal's records, in their order, leave placed and not released (pure).
///
/// A reduction (a `Place` of a hold its usage already settled in part, `declared` set) of a
/// hold released before it is ignored: the release came later in fact (a reduction is made
/// only of a held hold), so it cannot bring the hold back. A fresh `Place` of the same id (a
/// new request reusing the id) places it again.
pub fn holds_of(records: impl IntoIterator<Item = Record>) -> Vec<Hold> {
    // hold ids are the callers' request ids: unique per customer only
    let mut held: BTreeMap<(String, String), Hold> = BTreeMap::new();
    let mut released: BTreeSet<(String, String)> = BTreeSet::new();
    for r in records {
        match r {
            Record::Place { hold } => {
                let key = (hold.customer.clone(), hold.id.clone());
                if hold.declared.is_some() && released.contains(&key) {
                    continue;
                }
                released.remove(&key);
                held.insert(key, hold);
            }
            Record::Release { customer, hold_id } => {
                let key = (customer, hold_id);
                held.remove(&key);
                released.insert(key);
            }
        }
    }
    held.into_values().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;

    use super::*;

    fn hold(id: &str, q: i64, declared: Option<i64>) -> Hold {
        Hold {
            id: id.into(),
            customer: "acme".into(),
            agent: "a".into(),
            meter: "tokens".into(),
            group_key: "{}".into(),
            group: BTreeMap::new(),
            quantity: Decimal::from(q),
            amount: Decimal::from(q),
            tax: Decimal::ZERO,
            declared: declared.map(Decimal::from),
            expires_at_ms: 1,
            settled: BTreeMap::new(),
        }
    }

    fn release(id: &str) -> Record {
        Record::Release {
            customer: "acme".into(),
            hold_id: id.into(),
        }
    }

    fn place(h: Hold) -> Record {
        Record::Place { hold: h }
    }

    fn ids(holds: &[Hold]) -> Vec<(&str, Decimal)> {
        holds.iter().map(|h| (h.id.as_str(), h.quantity)).collect()
    }

    /// A reduction stored after the hold's release (reordered) cannot bring the released hold
    /// back at a replay; a reduction in order replaces the hold; a new request reusing a
    /// released id places it again, and its own reductions apply.
    #[test]
    fn a_release_is_never_undone_by_a_reduction_stored_after_it() {
        let reordered = holds_of([
            place(hold("h", 2000, None)),
            release("h"),
            place(hold("h", 1700, Some(2000))),
        ]);
        assert!(reordered.is_empty(), "{reordered:?}");
        let in_order = holds_of([
            place(hold("h", 2000, None)),
            place(hold("h", 1700, Some(2000))),
        ]);
        assert_eq!(ids(&in_order), [("h", Decimal::from(1700))]);
        let reused = holds_of([
            place(hold("h", 2000, None)),
            release("h"),
            place(hold("h", 500, None)),
            place(hold("h", 400, Some(500))),
            place(hold("k", 7, None)),
        ]);
        assert_eq!(
            ids(&reused),
            [("h", Decimal::from(400)), ("k", Decimal::from(7))]
        );
    }
}
