//! The agent SDK: record usage from async code without waiting on the broker.
//!
//! [`Agent::record`] puts an event on a bounded queue (it waits when the queue is full: that
//! is the backpressure, nothing is dropped); a background task takes up to `batch_max`
//! events at a time and publishes them through the crate's [`Publisher`] (`crate::publisher`:
//! `<prefix>.<customer>.<agent>`, `Nats-Msg-Id` = `<customer>:<agent>:<id>`, at most
//! `in_flight_max` unacknowledged at once, an id JetStream has "in process" sent again), then
//! retries the ones JetStream did not acknowledge with the same bytes and id (so a retry of a
//! publish that was in fact stored is a duplicate JetStream drops), with exponential backoff,
//! at most `retries_max` times. [`Agent::close`] is the graceful flush: it waits until every queued event is
//! acknowledged or has exhausted its retries, and returns the totals.
//!
//! It never invents quantities or reads a clock for an event the caller built; the
//! [`Recorder`] helpers stamp `now` and a random id for the common AI-agent events.

use std::time::Duration;

use async_nats::jetstream;
use tally_domain::{AgentId, CustomerId, EventId};
use tokio::sync::mpsc;

use crate::event::OutgoingEvent;
use crate::publisher::{Message, Publisher, Unsent};

/// How the SDK batches, bounds and retries.
#[derive(Debug, Clone, Copy)]
pub struct SdkConfig {
    /// Events waiting to be published; `record` waits when full. Default 10000.
    pub queue_max: usize,
    /// Most events taken off the queue at once. Default 500.
    pub batch_max: usize,
    /// Most publishes awaiting their JetStream ack. Default 256.
    pub in_flight_max: usize,
    /// Retries of an unacknowledged event before it is counted as failed. Default 8.
    pub retries_max: u32,
    /// First retry delay, doubled each retry up to 5 s. Default 100 ms.
    pub retry_backoff_ms: u64,
}

impl Default for SdkConfig {
    fn default() -> Self {
        SdkConfig {
            queue_max: 10_000,
            batch_max: 500,
            in_flight_max: 256,
            retries_max: 8,
            retry_backoff_ms: 100,
        }
    }
}

/// What the SDK did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SdkStats {
    /// Events JetStream stored.
    pub stored: u64,
    /// Events JetStream recognised as already stored (same id).
    pub duplicates: u64,
    /// Publish attempts repeated after a failure.
    pub retries: u64,
    /// Events given up on after `retries_max` retries.
    pub failed: u64,
}

/// Why the SDK refused an event.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("the SDK is closed; the event was not queued")]
    Closed,
    #[error("the SDK's publishing task ended abnormally: {0}")]
    Task(String),
}

/// A handle to the SDK's queue and publishing task. Cheap to clone; close one with
/// [`Agent::close`] after dropping the others.
pub struct Agent {
    tx: mpsc::Sender<OutgoingEvent>,
    task: tokio::task::JoinHandle<SdkStats>,
}

impl Agent {
    /// Starts the publishing task.
    pub fn start(js: jetstream::Context, subject_prefix: &str, cfg: SdkConfig) -> Agent {
        let (tx, rx) = mpsc::channel(cfg.queue_max.max(1));
        let task = tokio::spawn(run(js, subject_prefix.to_owned(), cfg, rx));
        Agent { tx, task }
    }

    /// Queues an event, waiting while the queue is full.
    pub async fn record(&self, event: OutgoingEvent) -> Result<(), SdkError> {
        self.tx.send(event).await.map_err(|_| SdkError::Closed)
    }

    /// A recorder stamping events for one customer's agent.
    pub fn recorder(&self, customer: CustomerId, agent: AgentId) -> Recorder<'_> {
        Recorder {
            sdk: self,
            customer,
            agent,
        }
    }

    /// Publishes everything queued, then stops; returns the totals.
    pub async fn close(self) -> Result<SdkStats, SdkError> {
        drop(self.tx);
        self.task.await.map_err(|e| SdkError::Task(e.to_string()))
    }
}

/// Records the usual AI-agent events for one agent, stamped now with a random id.
pub struct Recorder<'a> {
    sdk: &'a Agent,
    customer: CustomerId,
    agent: AgentId,
}

impl Recorder<'_> {
    fn event(&self, event_type: &str, data: serde_json::Value) -> OutgoingEvent {
        let id =
            EventId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid event id");
        OutgoingEvent {
            id,
            customer: self.customer.clone(),
            agent: self.agent.clone(),
            event_type: event_type.to_owned(),
            time: chrono::Utc::now(),
            data,
            hold_id: None,
        }
    }

    /// `llm.tokens` with `{tokens, model, kind}`; returns the event id.
    pub async fn llm_tokens(
        &self,
        model: &str,
        kind: &str,
        tokens: u64,
    ) -> Result<EventId, SdkError> {
        let e = self.event(
            "llm.tokens",
            serde_json::json!({"tokens": tokens, "model": model, "kind": kind}),
        );
        let id = e.id.clone();
        self.sdk.record(e).await.map(|()| id)
    }

    /// `tool.call` with `{tool}`; returns the event id.
    pub async fn tool_call(&self, tool: &str) -> Result<EventId, SdkError> {
        let e = self.event("tool.call", serde_json::json!({"tool": tool}));
        let id = e.id.clone();
        self.sdk.record(e).await.map(|()| id)
    }
}

/// One event ready to (re)send: the same subject, id and bytes on every attempt.
struct Wire {
    /// The event id (for logs).
    id: String,
    message: Message,
}

impl From<Unsent> for Wire {
    fn from(unsent: Unsent) -> Self {
        tracing::debug!(id = %unsent.id, error = %unsent.error, "not acknowledged");
        Wire {
            id: unsent.id,
            message: unsent.message,
        }
    }
}

async fn run(
    js: jetstream::Context,
    prefix: String,
    cfg: SdkConfig,
    mut rx: mpsc::Receiver<OutgoingEvent>,
) -> SdkStats {
    let mut publisher = Publisher::new(js, &prefix, cfg.in_flight_max);
    let mut stats = SdkStats::default();
    let mut batch = Vec::with_capacity(cfg.batch_max.max(1));
    while rx.recv_many(&mut batch, cfg.batch_max.max(1)).await > 0 {
        let wires = batch
            .drain(..)
            .map(|e| Wire {
                id: e.id.to_string(),
                message: Message::usage(publisher.prefix(), &e),
            })
            .collect();
        send_with_retries(&mut publisher, &cfg, wires, &mut stats).await;
    }
    let published = publisher.stats();
    stats.stored = published.stored;
    stats.duplicates = published.duplicates;
    stats
}

async fn send_with_retries(
    publisher: &mut Publisher,
    cfg: &SdkConfig,
    mut pending: Vec<Wire>,
    stats: &mut SdkStats,
) {
    let mut attempt = 0u32;
    loop {
        pending = send_once(publisher, pending).await;
        if pending.is_empty() {
            return;
        }
        if attempt >= cfg.retries_max {
            stats.failed += pending.len() as u64;
            tracing::error!(
                events = pending.len(),
                "giving up on events JetStream never acknowledged"
            );
            return;
        }
        attempt += 1;
        stats.retries += pending.len() as u64;
        let backoff_ms = cfg
            .retry_backoff_ms
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(5000);
        tracing::warn!(
            events = pending.len(),
            attempt,
            backoff_ms,
            "retrying unacknowledged events"
        );
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
    }
}

/// Publishes `wires` with at most `in_flight_max` unacknowledged (the publisher's bound);
/// returns the ones JetStream did not acknowledge.
async fn send_once(publisher: &mut Publisher, wires: Vec<Wire>) -> Vec<Wire> {
    let mut failed = Vec::new();
    for Wire { id, message } in wires {
        if publisher.is_full() {
            if let Err(unsent) = publisher.settle_oldest().await {
                failed.push(unsent.into());
            }
        }
        if let Err(unsent) = publisher.send(id, message).await {
            failed.push(unsent.into());
        }
    }
    while publisher.in_flight() > 0 {
        if let Err(unsent) = publisher.settle_oldest().await {
            failed.push(unsent.into());
        }
    }
    failed
}
