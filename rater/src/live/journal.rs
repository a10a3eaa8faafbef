//! The hold journal: every hold a decider places is recorded in JetStream before the agent
//! hears it is allowed, and every release after, so a decider that takes a partition over
//! (after a crash, a kill -9, a stop) restores the holds still live and never lets new
//! requests spend what earlier ones reserved.
//!
//! Stream `<usage stream>_HOLDS` over `<subject_prefix>_holds.>`, one subject per partition,
//! kept a little longer than the longest hold can live. This module records and replays; it
//! decides nothing.

use std::collections::BTreeMap;
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
        let mut held: BTreeMap<(String, String), Hold> = BTreeMap::new();
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
        while seen < pending {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| self.err("replay timed out"))?;
            let Some(msg) = next else { break };
            let msg = msg.map_err(|e| self.err(e))?;
            seen += 1;
            match serde_json::from_slice::<Record>(&msg.payload) {
                // hold ids are the callers' request ids: unique per customer only
                Ok(Record::Place { hold }) => {
                    held.insert((hold.customer.clone(), hold.id.clone()), hold);
                }
                Ok(Record::Release { customer, hold_id }) => {
                    held.remove(&(customer, hold_id));
                }
                Err(e) => tracing::warn!(error = %e, "unreadable hold record skipped"),
            }
            let at = msg.info().map(|i| i.stream_sequence).unwrap_or(last);
            if at >= last {
                break;
            }
        }
        Ok(held.into_values().collect())
    }
}
