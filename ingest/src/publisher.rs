//! The agent-side publisher: each event goes to `<prefix>.<customer>.<agent>` with
//! `Nats-Msg-Id` = `<customer>:<agent>:<id>` (the whole identity: no other customer's or
//! agent's event can share it), so JetStream drops a retried publish inside its duplicate
//! window and the aggregator drops it after that. Publishing is asynchronous: at most
//! `in_flight_max` publishes wait for their JetStream ack at once; the next publish waits
//! for the oldest ack. [`Publisher::flush`] waits for every ack. The agent SDK
//! (`crate::sdk`) publishes through a [`Publisher`] too, taking back what JetStream did not
//! acknowledge to send it again later; so `Nats-Msg-Id`, the bound and the re-send below are
//! written once.
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
    in_flight_max: usize,
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
    /// A usage event as every publisher of this crate sends it: to
    /// `<prefix>.<customer>.<agent>`, with `Nats-Msg-Id` = `<customer>:<agent>:<id>` and the
    /// event's CloudEvents JSON; the same subject, id and bytes on every send.
    pub fn usage(subject_prefix: &str, event: &OutgoingEvent) -> Message {
        let msg_id = nats_msg_id(
            event.customer.as_ref(),
            event.agent.as_ref(),
            event.id.as_ref(),
        );
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert("Content-Type", "application/cloudevents+json");
        Message {
            subject: Subject::from(usage_subject(subject_prefix, &event.customer, &event.agent)),
            headers,
            payload: Bytes::from(event.to_json()),
        }
    }

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

/// A message JetStream did not take (the send failed, or its answer was not an ack after the
/// re-sends above), handed back so the caller can send it again: its id makes that safe.
#[derive(Debug)]
pub(crate) struct Unsent {
    /// The event id.
    pub id: String,
    pub message: Message,
    pub error: PublishError,
}

impl Publisher {
    pub fn new(js: jetstream::Context, subject_prefix: &str, in_flight_max: usize) -> Self {
        Publisher {
            js,
            prefix: subject_prefix.to_owned(),
            in_flight_max: in_flight_max.max(1),
            in_flight: VecDeque::new(),
            stats: PublishStats::default(),
        }
    }

    /// Publishes one event, waiting first for the oldest ack if `in_flight_max` are pending.
    pub async fn publish(&mut self, event: &OutgoingEvent) -> Result<(), PublishError> {
        if self.is_full() {
            self.settle_oldest().await.map_err(|u| u.error)?;
        }
        let message = Message::usage(&self.prefix, event);
        self.send(event.id.to_string(), message)
            .await
            .map_err(|u| u.error)
    }

    /// The subject prefix events are published under.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `in_flight_max` publishes await their ack (the next send should settle the
    /// oldest first).
    pub(crate) fn is_full(&self) -> bool {
        self.in_flight.len() >= self.in_flight_max
    }

    /// Sends `message` (event `id`) once and keeps it in flight; it is handed back if the
    /// send itself fails.
    pub(crate) async fn send(&mut self, id: String, message: Message) -> Result<(), Unsent> {
        match message.send(&self.js).await {
            Ok(ack) => {
                self.in_flight.push_back(InFlight { id, message, ack });
                Ok(())
            }
            Err(e) => {
                let error = PublishError::Publish {
                    id: id.clone(),
                    detail: e.to_string(),
                };
                Err(Unsent { id, message, error })
            }
        }
    }

    /// Awaits the oldest ack (sending again while JetStream has the id "in process", see
    /// [`settle`]) and counts it; the message is handed back if it was not acknowledged.
    /// Nothing to do when nothing is in flight.
    pub(crate) async fn settle_oldest(&mut self) -> Result<(), Unsent> {
        let Some(InFlight { id, message, ack }) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let Settled { answer, in_process } = settle(&self.js, &message, ack).await;
        self.stats.in_process += in_process;
        match answer {
            Ok(ack) if ack.duplicate => self.stats.duplicates += 1,
            Ok(_) => self.stats.stored += 1,
            Err(e) => {
                let error = PublishError::Ack {
                    id: id.clone(),
                    detail: e.to_string(),
                };
                return Err(Unsent { id, message, error });
            }
        }
        Ok(())
    }

    /// Waits for every outstanding ack and returns the totals so far.
    pub async fn flush(&mut self) -> Result<PublishStats, PublishError> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await.map_err(|u| u.error)?;
        }
        Ok(self.stats)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The totals so far (publishes still in flight are not counted yet).
    pub fn stats(&self) -> PublishStats {
        self.stats
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
    fn a_usage_message_carries_the_whole_identity_and_the_event_bytes() {
        let event = OutgoingEvent {
            id: tally_domain::EventId::new("e-1").unwrap(),
            customer: tally_domain::CustomerId::new("acme").unwrap(),
            agent: tally_domain::AgentId::new("bot").unwrap(),
            event_type: "tool.call".into(),
            time: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            data: serde_json::json!({"tool": "search"}),
            hold_id: None,
        };
        let message = Message::usage("usage", &event);
        assert_eq!(message.subject.as_str(), "usage.acme.bot");
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header("Nats-Msg-Id").as_deref(), Some("acme:bot:e-1"));
        assert_eq!(
            header("Content-Type").as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(message.payload, Bytes::from(event.to_json()));
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
