//! Dead-letter records: every refused message goes to `<dlq_subject_prefix>.<reason>` in the
//! dead-letter stream with its reason, the offending field, a detail and the original payload.
//! Nothing is dropped silently. The record's `Nats-Msg-Id` is derived from the original
//! stream sequence, so a redelivered message does not produce a second record.

use async_nats::jetstream;
use async_nats::HeaderMap;
use serde::Serialize;

use crate::batch::Rejected;

/// The JSON body of a dead-letter record (a public format: add fields, never rename).
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub reason: &'a str,
    pub field: Option<&'a str>,
    pub detail: &'a str,
    /// The subject the event was published on.
    pub subject: &'a str,
    /// Its sequence in the usage stream.
    pub stream_seq: u64,
    /// The original payload (lossy UTF-8).
    pub payload: String,
}

/// Why publishing dead letters failed; the batch is not acked and will be redelivered.
#[derive(Debug, thiserror::Error)]
#[error("dead-letter publish failed: {0}")]
pub struct DeadLetterError(String);

/// Publishes every rejection of a batch and waits for JetStream's acks.
pub async fn publish_all(
    js: &jetstream::Context,
    dlq_prefix: &str,
    stream: &str,
    rejected: &[Rejected],
) -> Result<(), DeadLetterError> {
    let mut acks = Vec::with_capacity(rejected.len());
    for r in rejected {
        let record = DeadLetter {
            reason: r.rejection.reason.code(),
            field: r.rejection.field.as_deref(),
            detail: &r.rejection.detail,
            subject: &r.subject,
            stream_seq: r.stream_seq,
            payload: String::from_utf8_lossy(&r.payload).into_owned(),
        };
        let body = serde_json::to_vec(&record).map_err(|e| DeadLetterError(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("dlq-{stream}-{}", r.stream_seq).as_str(),
        );
        headers.insert("Tally-Reason", r.rejection.reason.code());
        let subject = format!("{dlq_prefix}.{}", r.rejection.reason.code());
        let ack = js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| DeadLetterError(e.to_string()))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| DeadLetterError(e.to_string()))?;
    }
    Ok(())
}
