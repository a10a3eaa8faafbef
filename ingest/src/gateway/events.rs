//! `POST /v1/events`: authenticate, decode, rate-limit, check each event's scope, publish the
//! accepted ones to `<prefix>.<customer>.<agent>` with `Nats-Msg-Id` and answer per event.
//!
//! One bad event never takes the others down: each gets its own result. Publishing awaits
//! JetStream's ack for every event before answering, so `accepted` means stored and
//! `duplicate` is the broker's own duplicate flag; a send JetStream answers "duplicate
//! message id is in process" (an R3 stream still storing the original) is sent again until
//! it is answered, as the ingest publisher does (`crate::publisher::settle`). It never alters an event's bytes, except
//! `subject` and `source` when pseudonymization is on.

use std::time::Instant;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::HeaderMap;
use bytes::Bytes;
use tally_domain::nats_msg_id;
use tally_domain::subject::usage_subject;

use super::decode::{self, Shape};
use super::error::RequestError;
use super::response::{EventResult, EventsResponse, Status};
use super::server::{Gateway, RequestParts};
use super::{auth::Scope, metrics};
use crate::publisher::{self, Message};

/// Handles one events request whose body has been read (`body` as sent on the wire).
pub async fn handle(
    gw: &Gateway,
    parts: &RequestParts,
    body: Bytes,
) -> Result<EventsResponse, RequestError> {
    let (key_id, scope) = gw.keys.authenticate(parts.authorization.as_deref())?;
    let shape = decode::shape(parts.content_type.as_deref())?;
    let body = if decode::is_gzip(parts.content_encoding.as_deref())? {
        Bytes::from(decode::gunzip(&body, gw.limits.body_max_bytes)?)
    } else {
        body
    };
    let raws: Vec<&[u8]> = match shape {
        Shape::Single => vec![&body[..]],
        Shape::Batch => decode::split_batch(&body, gw.limits.batch_max_events)?
            .into_iter()
            .map(|r| r.get().as_bytes())
            .collect(),
    };
    gw.limiter
        .take(&key_id, raws.len(), Instant::now())
        .map_err(|retry_after_secs| RequestError::RateLimited { retry_after_secs })?;
    let response = EventsResponse::from_results(publish_all(gw, &scope, &raws).await);
    let reasons: Vec<&'static str> = response
        .results
        .iter()
        .filter(|r| r.status == Status::Rejected)
        .filter_map(|r| r.code)
        .collect();
    metrics::events(
        response.accepted,
        response.duplicates,
        response.failed,
        &reasons,
    );
    Ok(response)
}

/// Validates, scope-checks and publishes each raw event, then awaits every ack: one result
/// per event, in order. `POST /v1/events` and `POST /v1/traces` both publish through here.
pub(super) async fn publish_all(gw: &Gateway, scope: &Scope, raws: &[&[u8]]) -> Vec<EventResult> {
    let mut results = Vec::with_capacity(raws.len());
    let mut pending: Vec<(usize, Message, PublishAckFuture)> = Vec::with_capacity(raws.len());
    for (index, raw) in raws.iter().enumerate() {
        match publish_one(gw, scope, index, raw).await {
            Ok((id, message, ack)) => {
                pending.push((results.len(), message, ack));
                results.push(pending_result(index, id));
            }
            Err(rejected) => results.push(rejected),
        }
    }
    // in order, so an id sent twice in one batch meets its original stored; an id JetStream
    // still has "in process" (an R3 stream, the same event through another gateway) is sent
    // again until it is answered (crate::publisher::settle)
    let mut resent = 0;
    for (slot, message, ack) in pending {
        let r = &mut results[slot];
        let settled = publisher::settle(&gw.js, &message, ack).await;
        resent += settled.in_process;
        match settled.answer {
            Ok(ack) if ack.duplicate => r.status = Status::Duplicate,
            Ok(_) => r.status = Status::Accepted,
            Err(e) => {
                r.status = Status::Failed;
                r.code = Some("unavailable");
                r.detail = Some(format!("JetStream did not acknowledge: {e}"));
            }
        }
    }
    metrics::in_process(resent);
    results
}

fn pending_result(index: usize, id: String) -> EventResult {
    EventResult {
        index,
        id: Some(id),
        status: Status::Failed,
        code: None,
        field: None,
        detail: None,
    }
}

/// Validates one event and hands it to JetStream; a rejection is the event's result.
async fn publish_one(
    gw: &Gateway,
    scope: &Scope,
    index: usize,
    raw: &[u8],
) -> Result<(String, Message, PublishAckFuture), EventResult> {
    let event = decode::decode_event(raw, &gw.limits)
        .map_err(|e| EventResult::rejected(index, None, e.code(), e.field(), e.to_string()))?;
    let id = event.id.to_string();
    scope.check(&event).map_err(|e| {
        EventResult::rejected(
            index,
            Some(id.clone()),
            tally_domain::Reason::SubjectMismatch.code(),
            Some(e.field().to_owned()),
            e.to_string(),
        )
    })?;
    // the message id names the identity as published (pseudonyms when they are on)
    let (subject, body, msg_id) = match &gw.pseudonyms {
        None => (
            usage_subject(&gw.subject_prefix, &event.customer, &event.agent),
            Bytes::copy_from_slice(raw),
            nats_msg_id(event.customer.as_ref(), event.agent.as_ref(), &id),
        ),
        Some(p) => {
            let (customer, agent) = (
                p.customer(&event.customer),
                p.agent(&event.customer, &event.agent),
            );
            let body = crate::pseudonym::rewrite(raw, &customer, &agent).map_err(|e| {
                EventResult::rejected(
                    index,
                    Some(id.clone()),
                    tally_domain::Reason::Malformed.code(),
                    None,
                    e.to_string(),
                )
            })?;
            (
                usage_subject(&gw.subject_prefix, &customer, &agent),
                Bytes::from(body),
                nats_msg_id(customer.as_ref(), agent.as_ref(), &id),
            )
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    headers.insert("Content-Type", decode::SINGLE);
    let message = Message {
        subject: subject.into(),
        headers,
        payload: body,
    };
    let ack = message.send(&gw.js).await.map_err(|e| EventResult {
        index,
        id: Some(id.clone()),
        status: Status::Failed,
        code: Some("unavailable"),
        field: None,
        detail: Some(format!("publishing: {e}")),
    })?;
    Ok((id, message, ack))
}
