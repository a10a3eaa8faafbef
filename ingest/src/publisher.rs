//! The agent-side publisher: each event goes to `<prefix>.<customer>.<agent>` with
//! `Nats-Msg-Id` = `<customer>:<agent>:<id>` (the whole identity: no other customer's or
//! agent's event can share it), so JetStream drops a retried publish inside its duplicate
//! window and the aggregator drops it after that. Publishing is asynchronous: at most
//! `max_in_flight` publishes wait for their JetStream ack at once; the next publish waits
//! for the oldest ack. [`Publisher::flush`] waits for every ack.
//!
//! On a replicated stream (R3 on a NATS cluster) nats-server 2.11 and later answer a publish
//! whose `Nats-Msg-Id` is that of a message still being replicated with 409 "duplicate
//! message id is in process" (JetStream error 10158) instead of a duplicate ack: a retry that
//! follows its original closely (a re-sent chunk, an id sent twice) meets it. The answer says
//! neither stored nor refused, so the publisher sends the same message again (at once, then
//! after growing pauses) until JetStream answers with an ack (a duplicate once the original
//! is stored, stored if the original was lost with its leader) or for about 3.5 s; only then
//! is it an error. [`settle`] does this for every publisher of usage events: this one, the
//! HTTP gateway (`gateway::events`) and the benchmark's.

use std::collections::VecDeque;
use std::error::Error as _;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, publish::PublishAck};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
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
    /// Sends JetStream answered with "duplicate message id is in process", each followed by
    /// a send of the same message (module docs).
    pub in_process: u64,
}

/// A bounded in-flight JetStream publisher.
pub struct Publisher {
    js: jetstream::Context,
    prefix: String,
    max_in_flight: usize,
    in_flight: VecDeque<InFlight>,
    stats: PublishStats,
}

/// A publish waiting for its ack, with what it takes to send it again.
struct InFlight {
    id: String,
    message: Message,
    ack: PublishAckFuture,
}

/// One message as published to JetStream, kept so it can be sent again.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: Subject,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl Message {
    /// Sends the message once; the future is JetStream's answer.
    pub async fn send(
        &self,
        js: &jetstream::Context,
    ) -> Result<PublishAckFuture, jetstream::context::PublishError> {
        js.publish_with_headers(
            self.subject.clone(),
            self.headers.clone(),
            self.payload.clone(),
        )
        .await
    }
}

/// What became of a message: JetStream's last answer, and how many of its sends were
/// answered "in process" (each followed by another send).
#[derive(Debug)]
pub struct Settled {
    pub answer: Result<PublishAck, jetstream::context::PublishError>,
    pub in_process: u64,
}

/// How a message whose id JetStream has "in process" is sent again: the first time at once
/// (acks are settled in order, so when the original was an earlier publish of this publisher
/// it is stored by now), then after a pause of 50 ms doubled each time, at most
/// [`IN_PROCESS_PAUSE_MAX`] (an original of another publisher, a stream without a leader):
/// 9 sends in all over about 3.5 s.
const IN_PROCESS_PAUSE: Duration = Duration::from_millis(50);
const IN_PROCESS_PAUSE_MAX: Duration = Duration::from_secs(1);
const IN_PROCESS_SENDS: u32 = 9;

/// JetStream's "duplicate message id is in process" (409, error 10158).
const DUPLICATE_IN_PROCESS: jetstream::ErrorCode = jetstream::ErrorCode(10158);

/// Whether JetStream answered `e` because the message's id is that of one it is still
/// storing (see the module docs).
pub fn in_process(e: &jetstream::context::PublishError) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == DUPLICATE_IN_PROCESS)
}

/// Awaits `first`, the ack of `message`'s first send, and sends `message` again while
/// JetStream answers "in process" (at once, then after growing pauses: see the module docs),
/// until another answer or 9 sends in all. Every publisher of usage events (this
/// one, the HTTP gateway, the benchmark's) settles its acks through here.
pub async fn settle(
    js: &jetstream::Context,
    message: &Message,
    first: PublishAckFuture,
) -> Settled {
    let mut answer = first.await;
    let (mut pause, mut sends, mut in_process_answers) = (Duration::ZERO, 1, 0);
    while sends < IN_PROCESS_SENDS && answer.as_ref().is_err_and(in_process) {
        tracing::debug!(subject = %message.subject, sends, "JetStream has the message's id in process; sending it again");
        in_process_answers += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).clamp(IN_PROCESS_PAUSE, IN_PROCESS_PAUSE_MAX);
        sends += 1;
        answer = match message.send(js).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
    }
    Settled {
        answer,
        in_process: in_process_answers,
    }
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
        let subject = Subject::from(usage_subject(&self.prefix, &event.customer, &event.agent));
        let mut headers = HeaderMap::new();
        let msg_id = nats_msg_id(
            event.customer.as_ref(),
            event.agent.as_ref(),
            event.id.as_ref(),
        );
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert("Content-Type", "application/cloudevents+json");
        let message = Message {
            subject,
            headers,
            payload: Bytes::from(event.to_json()),
        };
        let id = event.id.to_string();
        let ack = message
            .send(&self.js)
            .await
            .map_err(|e| PublishError::Publish {
                id: id.clone(),
                detail: e.to_string(),
            })?;
        self.in_flight.push_back(InFlight { id, message, ack });
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<(), PublishError> {
        let Some(InFlight { id, message, ack }) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let Settled { answer, in_process } = settle(&self.js, &message, ack).await;
        self.stats.in_process += in_process;
        let ack = answer.map_err(|e| PublishError::Ack {
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError as AckError, PublishErrorKind};

    fn answered(json: &str) -> AckError {
        let e: jetstream::Error = serde_json::from_str(json).expect("a server error");
        AckError::with_source(PublishErrorKind::Other, e)
    }

    #[test]
    fn only_an_id_in_process_is_sent_again() {
        assert!(in_process(&answered(
            r#"{"code":409,"err_code":10158,"description":"duplicate message id is in process"}"#
        )));
        assert!(!in_process(&answered(
            r#"{"code":503,"err_code":10077,"description":"maximum messages exceeded"}"#
        )));
        assert!(!in_process(&answered(
            r#"{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}"#
        )));
        assert!(!in_process(&AckError::new(PublishErrorKind::TimedOut)));
        assert!(!in_process(&AckError::new(
            PublishErrorKind::StreamNotFound
        )));
    }
}
