//! Sending one signed notification: `POST` of the JSON body with
//! `Tally-Signature: t=<secs>,v1=<hex hmac of "{t}.{body}">` (the scheme Stripe uses, so
//! receivers verify it the same way) and `Tally-Notification-Id`. Never logs the secret or the
//! signature.

use std::time::Duration;

use crate::outbound;
use crate::signature::{self, Secret};

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 0 when no response arrived.
    pub status_code: u16,
    pub delivered: bool,
    pub error: String,
}

/// Posts `body` to `url`, signed with `secret` at `now_secs`.
pub async fn post(
    url: &str,
    notification_id: &str,
    body: &str,
    secret: &Secret,
    now_secs: i64,
    timeout: Duration,
) -> Attempt {
    let headers = [
        ("Tally-Notification-Id", notification_id.to_owned()),
        (
            "Tally-Signature",
            signature::header(secret, now_secs, body.as_bytes()),
        ),
    ];
    match outbound::post(
        url,
        "application/json",
        &headers,
        body.as_bytes().to_vec(),
        timeout,
    )
    .await
    {
        Ok(r) => {
            let delivered = (200..300).contains(&r.status);
            Attempt {
                status_code: r.status,
                delivered,
                error: if delivered {
                    String::new()
                } else {
                    format!("HTTP {}", r.status)
                },
            }
        }
        Err(error) => Attempt {
            status_code: 0,
            delivered: false,
            error,
        },
    }
}
