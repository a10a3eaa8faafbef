//! Payment retries through the gateway's API: when a retry step of an invoice whose last
//! failed attempt came from a gateway that retries by request (Stripe) is due, send the
//! adapter's retry request (with its idempotency key and the API key), retried with the same
//! backoff as notifications, and log every attempt in `gateway_requests`. The payment's
//! outcome comes back as a webhook, as for any payment. Never logs the API key.

use std::collections::HashMap;
use std::time::Duration;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_platform::store::datetime_secs;

use super::schedule::{self, Kind, Owed};
use super::PassReport;
use crate::config::{DunningConfig, SecretString};
use crate::gateway::{Gateway, GatewayRequest, Retry};
use crate::{outbound, Error};

/// A gateway's API, for retries.
pub struct GatewayApi {
    pub gateway: Box<dyn Gateway>,
    pub base_url: String,
    pub api_key: SecretString,
    pub timeout: Duration,
}

#[derive(clickhouse::Row, Serialize)]
struct LogRow<'a> {
    idempotency_key: &'a str,
    invoice_id: &'a str,
    customer: &'a str,
    gateway: &'a str,
    path: &'a str,
    attempt: u32,
    status_code: u16,
    succeeded: u8,
    response_ref: &'a str,
    error: &'a str,
    actor: &'a str,
    at_ms: i64,
    at: u32,
}

#[derive(clickhouse::Row, Deserialize)]
struct Tried {
    idempotency_key: String,
    n: u64,
    last: i64,
    ok: u8,
}

/// Per idempotency key: attempts logged, the last attempt's time, whether one succeeded.
pub(crate) async fn tried(
    db: &Client,
) -> Result<HashMap<String, (u32, i64, bool)>, clickhouse::error::Error> {
    let rows: Vec<Tried> = db
        .query(
            "SELECT idempotency_key, count() AS n, max(at_ms) AS last, max(succeeded) AS ok \
             FROM gateway_requests GROUP BY idempotency_key",
        )
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.idempotency_key,
                (u32::try_from(r.n).unwrap_or(u32::MAX), r.last, r.ok == 1),
            )
        })
        .collect())
}

/// The retry requests due at `now_ms` for `owed`, with the invoice and customer.
fn due<'a>(
    api: &GatewayApi,
    cfg: &DunningConfig,
    owed: &'a [Owed],
    now_ms: i64,
) -> Vec<(&'a Owed, GatewayRequest)> {
    let mut out = Vec::new();
    for o in owed {
        let Some(f) = o
            .last_failure
            .as_ref()
            .filter(|f| f.gateway == api.gateway.name())
        else {
            continue;
        };
        for n in schedule::due(o, &cfg.retry_schedule_secs, &[], now_ms) {
            if n.kind != Kind::PaymentRetry {
                continue;
            }
            let r = Retry {
                invoice_id: &o.invoice_id,
                payment_ref: &f.payment_ref,
                payment_method: &f.payment_method,
                step: n.step,
            };
            if let Some(req) = api.gateway.retry_request(&r) {
                out.push((o, req));
            }
        }
    }
    out
}

/// The attempt number to send `key` as at `now_ms`, or `None` when it already succeeded, ran
/// out of attempts or is inside its backoff (`log` from [`tried`]).
pub(crate) fn next_attempt(
    log: &HashMap<String, (u32, i64, bool)>,
    key: &str,
    attempts_max: u32,
    backoff_secs: i64,
    now_ms: i64,
) -> Option<u32> {
    let (done, last_ms, ok) = log.get(key).copied().unwrap_or((0, 0, false));
    let wait = schedule::next_attempt_ms(done, last_ms, backoff_secs) > now_ms;
    (!ok && done < attempts_max && !wait).then_some(done + 1)
}

/// Sends the retry requests that are due and logs each attempt.
pub async fn pass(
    db: &Client,
    api: &GatewayApi,
    cfg: &DunningConfig,
    owed: &[Owed],
    now_ms: i64,
    report: &mut PassReport,
) -> Result<(), Error> {
    let log = tried(db).await?;
    for (o, req) in due(api, cfg, owed, now_ms) {
        let Some(attempt) = next_attempt(
            &log,
            &req.idempotency_key,
            cfg.delivery_attempts_max,
            cfg.delivery_backoff_secs,
            now_ms,
        ) else {
            continue;
        };
        let succeeded = send_logged(db, api, o, &req, attempt, super::ACTOR, now_ms).await?;
        if succeeded {
            report.retries_sent += 1;
        } else {
            report.retries_failed += 1;
        }
    }
    Ok(())
}

/// Sends `req` to the gateway's API (bearer key, `Idempotency-Key`) as attempt `attempt` and
/// appends the attempt to `gateway_requests`; true when the gateway answered 2xx.
pub(crate) async fn send_logged(
    db: &Client,
    api: &GatewayApi,
    o: &Owed,
    req: &GatewayRequest,
    attempt: u32,
    actor: &str,
    now_ms: i64,
) -> Result<bool, Error> {
    let url = format!("{}{}", api.base_url.trim_end_matches('/'), req.path);
    let headers = [
        ("Authorization", format!("Bearer {}", api.api_key.expose())),
        ("Idempotency-Key", req.idempotency_key.clone()),
    ];
    let result = outbound::post(
        None,
        &url,
        "application/x-www-form-urlencoded",
        &headers,
        req.body().into_bytes(),
        api.timeout,
    )
    .await;
    let (status_code, response_ref, error) = match &result {
        Ok(r) => {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let id = v
                .get("id")
                .and_then(|i| i.as_str())
                .unwrap_or_default()
                .to_owned();
            let err = if (200..300).contains(&r.status) {
                String::new()
            } else {
                let detail = v
                    .pointer("/error/code")
                    .and_then(|c| c.as_str())
                    .unwrap_or_default();
                format!("HTTP {} {detail}", r.status).trim_end().to_owned()
            };
            (r.status, id, err)
        }
        Err(e) => (0, String::new(), e.clone()),
    };
    let succeeded = (200..300).contains(&status_code);
    let mut insert = db.insert::<LogRow<'_>>("gateway_requests").await?;
    insert
        .write(&LogRow {
            idempotency_key: &req.idempotency_key,
            invoice_id: &o.invoice_id,
            customer: o.customer.as_str(),
            gateway: api.gateway.name(),
            path: &req.path,
            attempt,
            status_code,
            succeeded: u8::from(succeeded),
            response_ref: &response_ref,
            error: &error,
            actor,
            at_ms: now_ms,
            at: datetime_secs(now_ms),
        })
        .await?;
    insert.end().await?;
    crate::metrics::gateway_request(if succeeded { "succeeded" } else { "failed" });
    tracing::info!(invoice_id = %o.invoice_id, gateway = api.gateway.name(), path = %req.path,
        attempt, status_code, %error, actor, at_ms = now_ms, "gateway request sent");
    Ok(succeeded)
}
