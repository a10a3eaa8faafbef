//! The batch in flight: accepted events, their rollups, dead-letter records and every
//! message waiting for its ack. Bounded by `batch_max_events` messages; nothing here is
//! durable and nothing here is visible to readers until the sink commits it.

use std::collections::HashMap;

use async_nats::jetstream::Message;
use tally_domain::{AgentId, CustomerId, Partial, UsageEvent, Window};

use crate::classify::{Accepted, Rejection};

/// The identity of one rollup row within a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollupKey {
    pub window_start_ms: i64,
    pub customer: CustomerId,
    pub agent: AgentId,
    /// Index into the classifier's meters.
    pub meter: usize,
    pub group_values: Vec<String>,
}

/// An accepted event and where it came from.
#[derive(Debug)]
pub struct AcceptedEvent {
    pub event: UsageEvent,
    pub payload_hash: u64,
    pub stream_seq: u64,
}

/// A rejected message and where it came from.
#[derive(Debug)]
pub struct Rejected {
    pub rejection: Rejection,
    pub subject: String,
    pub stream_seq: u64,
    pub payload: bytes::Bytes,
}

/// Everything one flush commits and acknowledges.
#[derive(Default)]
pub struct Batch {
    pub events: Vec<AcceptedEvent>,
    pub rollups: HashMap<RollupKey, Partial>,
    pub rejected: Vec<Rejected>,
    /// Every message of the batch, acked only after the commit.
    pub to_ack: Vec<Message>,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A rollup sum overflowed; the event must be refused rather than miscounted.
#[derive(Debug, thiserror::Error)]
#[error("rollup for meter {meter} overflowed")]
pub struct Overflow {
    pub meter: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.to_ack.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to_ack.is_empty()
    }

    /// Records a message's stream sequence and keeps it for acking.
    pub fn track(&mut self, msg: Message, stream_seq: u64) {
        if self.to_ack.is_empty() || stream_seq < self.first_seq {
            self.first_seq = stream_seq;
        }
        self.last_seq = self.last_seq.max(stream_seq);
        self.to_ack.push(msg);
    }

    /// Folds an accepted event into its windows. On overflow nothing is changed.
    pub fn add_accepted(
        &mut self,
        acc: Accepted,
        stream_seq: u64,
        window_secs: u32,
    ) -> Result<(), Overflow> {
        let window = Window::containing(acc.event.time_ms, window_secs);
        let mut updated = Vec::with_capacity(acc.readings.len());
        for (meter, reading) in &acc.readings {
            let key = RollupKey {
                window_start_ms: window.start_ms,
                customer: acc.event.customer.clone(),
                agent: acc.event.agent.clone(),
                meter: *meter,
                group_values: reading.group_values.clone(),
            };
            let mut partial = self.rollups.get(&key).copied().unwrap_or_default();
            partial
                .fold(reading.value)
                .ok_or(Overflow { meter: *meter })?;
            updated.push((key, partial));
        }
        self.rollups.extend(updated);
        self.events.push(AcceptedEvent {
            event: acc.event,
            payload_hash: acc.payload_hash,
            stream_seq,
        });
        Ok(())
    }

    pub fn add_rejected(&mut self, rejected: Rejected) {
        self.rejected.push(rejected);
    }
}
