//! Spend control over HTTP for agents, with the same API keys as `/v1/events`:
//! `POST /v1/authorize` (`{"agent", "meter", "max_quantity", "group", "deadline_ms",
//! "request_id"}`, or `{"agent", "release"}`) and `GET /v1/balance`. The key names the
//! customer; the agent must be one the key may publish for. Each request is passed over NATS
//! request/reply to the partition's spend decider (`<spend root>.authorize.<customer>.<agent>`,
//! `<spend root>.balance.<customer>`) and its answer returned as it is: a denial is an answer
//! (200 with `allow: false` and its reason code), not an HTTP error. No decider within
//! `ingest.spend_timeout_ms`: 503 `unavailable` (the client's failure policy decides).
//!
//! It owns the HTTP side only: the decisions are the decider's (`rater::live`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use tally_domain::AgentId;

use super::error::RequestError;
use super::server::{json, read_body, Gateway, HttpRequest};

/// Largest authorize body (the decider refuses more than 4 KiB anyway).
const BODY_MAX_BYTES: usize = 8 << 10;

/// `POST /v1/authorize`.
pub async fn authorize(
    gw: &Gateway,
    req: HttpRequest,
) -> Result<Response<Full<Bytes>>, RequestError> {
    let (head, body) = req.into_parts();
    let header = head
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (key_id, scope) = gw.authenticate(header).await?;
    gw.limiter
        .take(&key_id, 1, Instant::now())
        .map_err(|retry_after_secs| RequestError::RateLimited { retry_after_secs })?;
    let body = read_body(gw, &head.headers, body).await?;
    if body.len() > BODY_MAX_BYTES {
        return Err(RequestError::BodyTooLarge {
            max: BODY_MAX_BYTES,
        });
    }
    let (agent, rest) = split_agent(&body)?;
    if !scope.agents.is_empty() && !scope.agents.contains(&agent) {
        return Err(RequestError::InvalidField {
            field: "agent",
            detail: format!("{agent} is not an agent this API key may act for"),
        });
    }
    let (customer, agent) = match &gw.pseudonyms {
        Some(p) => (
            p.customer(&scope.customer),
            p.agent(&scope.customer, &agent),
        ),
        None => (scope.customer.clone(), agent),
    };
    let subject = format!("{}.authorize.{customer}.{agent}", gw.cfg.spend_subject_root);
    let answer = ask(gw, subject, rest).await?;
    Ok(raw_json(StatusCode::OK, answer))
}

/// `GET /v1/balance`: the key's customer's spend of the period, holds and budgets.
pub async fn balance(
    gw: &Gateway,
    req: HttpRequest,
) -> Result<Response<Full<Bytes>>, RequestError> {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (key_id, scope) = gw.authenticate(header).await?;
    gw.limiter
        .take(&key_id, 1, Instant::now())
        .map_err(|retry_after_secs| RequestError::RateLimited { retry_after_secs })?;
    let customer = match &gw.pseudonyms {
        Some(p) => p.customer(&scope.customer),
        None => scope.customer.clone(),
    };
    let subject = format!("{}.balance.{customer}", gw.cfg.spend_subject_root);
    let answer = ask(gw, subject, Bytes::new()).await?;
    let unknown = serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .is_some_and(|v| v.get("error").is_some());
    if unknown {
        return Ok(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": {"code": "unknown_customer", "message": "the customer has no plan in force"}}),
        ));
    }
    Ok(raw_json(StatusCode::OK, answer))
}

/// The `agent` field, and the body without it (what the decider reads).
fn split_agent(body: &[u8]) -> Result<(AgentId, Bytes), RequestError> {
    let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| RequestError::MalformedJson {
            detail: e.to_string(),
        })?;
    let agent = match object.remove("agent") {
        Some(serde_json::Value::String(s)) => {
            AgentId::new(s).map_err(|e| RequestError::InvalidField {
                field: "agent",
                detail: e.to_string(),
            })?
        }
        _ => {
            return Err(RequestError::InvalidField {
                field: "agent",
                detail: "a string naming the agent is required".into(),
            })
        }
    };
    let rest = serde_json::to_vec(&object).map_err(|e| RequestError::MalformedJson {
        detail: e.to_string(),
    })?;
    Ok((agent, Bytes::from(rest)))
}

/// One request to the deciders; 503 when none answers in time.
async fn ask(gw: &Gateway, subject: String, body: Bytes) -> Result<Bytes, RequestError> {
    let unavailable = |detail: String| RequestError::Unavailable { detail };
    let client = gw.js.client();
    let wait = Duration::from_millis(gw.cfg.spend_timeout_ms);
    match tokio::time::timeout(wait, client.request(subject, body)).await {
        Ok(Ok(msg)) => Ok(msg.payload),
        Ok(Err(e)) => Err(unavailable(format!("spend decider: {e}"))),
        Err(_) => Err(unavailable(format!(
            "no spend decider answered within {} ms",
            gw.cfg.spend_timeout_ms
        ))),
    }
}

fn raw_json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_taken_out_of_the_body() {
        let (agent, rest) =
            split_agent(br#"{"agent":"bot-1","meter":"tool_calls","max_quantity":"2"}"#).unwrap();
        assert_eq!(agent.as_str(), "bot-1");
        let rest: serde_json::Value = serde_json::from_slice(&rest).unwrap();
        assert_eq!(
            rest,
            serde_json::json!({"meter": "tool_calls", "max_quantity": "2"})
        );
        for bad in [&b"{}"[..], br#"{"agent": 5}"#, br#"{"agent": "a b"}"#] {
            assert!(matches!(
                split_agent(bad),
                Err(RequestError::InvalidField { field: "agent", .. })
            ));
        }
        assert!(matches!(
            split_agent(b"[1]"),
            Err(RequestError::MalformedJson { .. })
        ));
    }
}
