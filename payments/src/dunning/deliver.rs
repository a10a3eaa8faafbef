//! Sending one signed notification: `POST` of the JSON body with
//! `Tally-Signature: t=<secs>,v1=<hex hmac of "{t}.{body}">` (the scheme Stripe uses, so
//! receivers verify it the same way) and `Tally-Notification-Id`, over `https://` with the
//! receiver's certificate verified ([`outbound`]). Each customer's endpoint has its own
//! signing secret ([`endpoint_secret_hex`]), so a receiver that can verify its notices cannot
//! sign one for another customer. Never logs the secret or the signature.

use std::time::Duration;

use ring::hmac;

use crate::outbound::{self, Trust};
use crate::signature::{self, Secret};

/// What the per-endpoint secrets are derived under (a new version would re-key every endpoint).
const ENDPOINT_KEY_CONTEXT: &str = "tally-dunning-endpoint-v1:";

/// The secret of `customer`'s notification endpoint, as the hex text its receiver verifies
/// with: HMAC-SHA256 of `tally-dunning-endpoint-v1:<customer>` under `dunning.signing_secret`
/// (a PRF: knowing one customer's secret tells nothing of another's, nor of the signing
/// secret). Every endpoint's secret changes when the signing secret is rotated.
pub fn endpoint_secret_hex(signing_secret: &str, customer: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, signing_secret.as_bytes());
    let tag = hmac::sign(&key, format!("{ENDPOINT_KEY_CONTEXT}{customer}").as_bytes());
    signature::hex(tag.as_ref())
}

/// [`endpoint_secret_hex`] as a signing key.
pub fn endpoint_secret(signing_secret: &str, customer: &str) -> Secret {
    Secret::new(&endpoint_secret_hex(signing_secret, customer))
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 0 when no response arrived.
    pub status_code: u16,
    pub delivered: bool,
    pub error: String,
}

/// Posts `body` to `url`, signed with `secret` (the endpoint's) at `now_secs`; an `https://`
/// receiver must chain to `trust`.
#[allow(clippy::too_many_arguments)]
pub async fn post(
    trust: Option<&Trust>,
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
        trust,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, finding 11: one secret signed every customer's notices, so any receiver could
    /// forge notices to every other.
    #[test]
    fn each_endpoint_has_its_own_secret() {
        let master = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let acme = endpoint_secret_hex(master, "acme");
        let globex = endpoint_secret_hex(master, "globex");
        assert_eq!(acme.len(), 64);
        assert_ne!(acme, globex);
        assert_ne!(acme, master);
        assert_eq!(acme, endpoint_secret_hex(master, "acme"), "stable");
        let h = signature::header(&endpoint_secret(master, "acme"), 100, b"{}");
        let check = |s: &Secret| signature::verify(s, Some(&h), b"{}", 100, 300).is_ok();
        assert!(check(&Secret::new(&acme)));
        assert!(!check(&Secret::new(&globex)));
        assert!(!check(&Secret::new(master)));
    }
}
