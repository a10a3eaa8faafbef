//! Dead-letter records: every refused message goes to `<dlq_subject_prefix>.<reason>` in the
//! dead-letter stream with its reason, the offending field, a detail, its stream sequence
//! (where the whole message stays, for the stream's retention) and at most
//! [`PAYLOAD_EXCERPT_BYTES`] of its payload. Nothing is dropped silently, and a record always
//! fits a NATS message whatever the event held (a 700 KB event of escaped quotes made a record
//! over NATS's 1 MB limit, and the partition stopped behind it). The record's `Nats-Msg-Id` is
//! derived from the original stream sequence, so a redelivered message does not produce a
//! second record.

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
    /// The start of the original payload (lossy UTF-8), at most [`PAYLOAD_EXCERPT_BYTES`].
    pub payload: String,
    /// The original payload's size in bytes.
    pub payload_bytes: usize,
    /// Whether `payload` is only the start of it (the whole message is at `stream_seq`).
    pub truncated: bool,
}

/// The most payload bytes a record carries.
pub const PAYLOAD_EXCERPT_BYTES: usize = 4096;

/// A record's detail is cut to this many bytes too.
const DETAIL_MAX_BYTES: usize = 1024;

/// The first `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
        let excerpt = &r.payload[..r.payload.len().min(PAYLOAD_EXCERPT_BYTES)];
        let record = DeadLetter {
            reason: r.rejection.reason.code(),
            field: r.rejection.field.as_deref().map(|f| cut(f, 256)),
            detail: cut(&r.rejection.detail, DETAIL_MAX_BYTES),
            subject: &r.subject,
            stream_seq: r.stream_seq,
            payload: String::from_utf8_lossy(excerpt).into_owned(),
            payload_bytes: r.payload.len(),
            truncated: r.payload.len() > PAYLOAD_EXCERPT_BYTES,
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
