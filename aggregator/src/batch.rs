//! The batch in flight: accepted events with their meter readings assigned to tumbling
//! windows, dead-letter records, and every message waiting for its ack. Bounded by
//! `batch_max_events` messages; nothing here is durable and nothing here is visible to
//! readers until the sink commits it.

use async_nats::jetstream::Message;
use tally_domain::meter::MeterReading;
use tally_domain::Window;
use tally_platform::store::datetime_secs;

use crate::classify::{Accepted, Rejection};
use crate::payload::EventText;

/// An accepted event, its readings and where it came from.
#[derive(Debug)]
pub struct AcceptedEvent {
    pub event: EventText,
    /// The tumbling window of the event time (every reading of the event lies in it).
    pub window: Window,
    /// `(index into the classifier's meters, reading)`.
    pub readings: Vec<(usize, MeterReading)>,
    pub payload_hash: u64,
    pub stream_seq: u64,
    /// When JetStream stored it (seconds since the epoch): `usage_events.received_at`.
    pub received_at: u32,
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
    pub rejected: Vec<Rejected>,
    /// Every message of the batch, acked only after the commit.
    pub to_ack: Vec<Message>,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Messages whose id was already committed or pending (counted, never written).
    pub duplicates: u64,
}

impl Batch {
    /// An empty batch with room for `events` accepted events, so filling it never grows
    /// (and copies) its vectors.
    pub fn with_capacity(events: usize) -> Batch {
        Batch {
            events: Vec::with_capacity(events),
            to_ack: Vec::with_capacity(events),
            ..Batch::default()
        }
    }

    /// Empties the batch and keeps its vectors' room, so the next batch neither allocates
    /// nor touches fresh memory.
    pub fn clear(&mut self) {
        self.events.clear();
        self.rejected.clear();
        self.to_ack.clear();
        self.first_seq = 0;
        self.last_seq = 0;
        self.duplicates = 0;
    }

    /// Messages in the batch (accepted, duplicate and rejected).
    pub fn len(&self) -> usize {
        self.to_ack.len()
    }

    pub fn is_empty(&self) -> bool {
        self.to_ack.is_empty()
    }

    /// Readings in the batch.
    pub fn readings(&self) -> usize {
        self.events.iter().map(|e| e.readings.len()).sum()
    }

    /// Records a message's stream sequence and keeps it for acking.
    pub fn track(&mut self, msg: Message, stream_seq: u64) {
        self.note_seq(stream_seq);
        self.to_ack.push(msg);
    }

    fn note_seq(&mut self, stream_seq: u64) {
        if self.first_seq == 0 || stream_seq < self.first_seq {
            self.first_seq = stream_seq;
        }
        self.last_seq = self.last_seq.max(stream_seq);
    }

    /// Assigns an accepted event's readings to their tumbling windows and keeps it.
    pub fn add_accepted(&mut self, acc: Accepted, stream_seq: u64, window_secs: u32) {
        let window = Window::containing(acc.event.time_ms, window_secs);
        self.note_seq(stream_seq);
        self.events.push(AcceptedEvent {
            event: acc.event,
            window,
            readings: acc.readings,
            payload_hash: acc.payload_hash,
            stream_seq,
            received_at: datetime_secs(acc.received_ms),
        });
    }

    pub fn add_rejected(&mut self, rejected: Rejected) {
        self.rejected.push(rejected);
    }
}
