//! The agent-side publisher: each event goes to `<prefix>.<customer>.<agent>` with
//! `Nats-Msg-Id` = `<customer>:<agent>:<id>` (the whole identity: no other customer's or
//! agent's event can share it), so JetStream drops a retried publish inside its duplicate
//! window and the aggregator drops it after that. Publishing is asynchronous: at most
//! `max_in_flight` publishes wait for their JetStream ack at once; the next publish waits
//! for the oldest ack. [`Publisher::flush`] waits for every ack.

use std::collections::VecDeque;

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use tally_domain::nats_msg_id;
use tally_domain::subject::usage_subject;

use crate::event::OutgoingEvent;

/// A publish JetStream did not confirm. The caller may retry with the same event: the id
/// makes the retry safe.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing event {id}: {detail}")]
    Publish { id: String, detail: String },
    #[error("JetStream did not acknowledge event {id}: {detail}")]
    Ack { id: String, detail: String },
}

/// What the publisher has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Publishes JetStream stored.
    pub stored: u64,
    /// Publishes JetStream recognised as duplicates of a stored id.
    pub duplicates: u64,
}

/// A bounded in-flight JetStream publisher.
pub struct Publisher {
    js: jetstream::Context,
    prefix: String,
    max_in_flight: usize,
    in_flight: VecDeque<(String, PublishAckFuture)>,
    stats: PublishStats,
}

impl Publisher {
    pub fn new(js: jetstream::Context, subject_prefix: &str, max_in_flight: usize) -> Self {
        Publisher {
            js,
            prefix: subject_prefix.to_owned(),
            max_in_flight: max_in_flight.max(1),
            in_flight: VecDeque::new(),
            stats: PublishStats::default(),
        }
    }

    /// Publishes one event, waiting first for the oldest ack if `max_in_flight` are pending.
    pub async fn publish(&mut self, event: &OutgoingEvent) -> Result<(), PublishError> {
        if self.in_flight.len() >= self.max_in_flight {
            self.settle_oldest().await?;
        }
        let subject = usage_subject(&self.prefix, &event.customer, &event.agent);
        let mut headers = HeaderMap::new();
        let msg_id = nats_msg_id(
            event.customer.as_ref(),
            event.agent.as_ref(),
            event.id.as_ref(),
        );
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert("Content-Type", "application/cloudevents+json");
        let ack = self
            .js
            .publish_with_headers(subject, headers, event.to_json().into())
            .await
            .map_err(|e| PublishError::Publish {
                id: event.id.to_string(),
                detail: e.to_string(),
            })?;
        self.in_flight.push_back((event.id.to_string(), ack));
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<(), PublishError> {
        let Some((id, ack)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let ack = ack.await.map_err(|e| PublishError::Ack {
            id,
            detail: e.to_string(),
        })?;
        if ack.duplicate {
            self.stats.duplicates += 1;
        } else {
            self.stats.stored += 1;
        }
        Ok(())
    }

    /// Waits for every outstanding ack and returns the totals so far.
    pub async fn flush(&mut self) -> Result<PublishStats, PublishError> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(self.stats)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
