//! HMAC-SHA256 signatures in Stripe's documented `Stripe-Signature` scheme, used three ways:
//! verifying gateway webhooks, signing the notifications dunning sends, and signing portal
//! links.
//!
//! The header is `t=<unix seconds>,v1=<hex hmac>[,v1=...]`; the signed payload is
//! `"{t}.{body}"`. A header is accepted when `t` is within the tolerance of `now` and one `v1`
//! matches. The work is bounded before it is done: the header's length and its number of
//! `v1` candidates ([`CANDIDATES_MAX`]) are capped, the timestamp is checked first, and the MAC
//! is computed once per header and compared with each candidate in constant time, so a hostile
//! header costs one HMAC of the body at most. This module never logs or returns a secret, and
//! never accepts an unsigned or stale payload.

use ring::hmac;
use subtle::ConstantTimeEq;

pub use tally_platform::secrets::hex;

/// Most `v1=` signatures a header may carry (Stripe sends one per active secret: two while a
/// secret is rolled).
pub const CANDIDATES_MAX: usize = 8;
/// Longest signature header accepted.
pub const HEADER_BYTES_MAX: usize = 4096;

/// A shared secret. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl Secret {
    pub fn new(secret: &str) -> Secret {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }

    /// The hex HMAC-SHA256 of `message`.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex(hmac::sign(&self.0, message).as_ref())
    }

    /// Whether `sig_hex` is the HMAC of `message` (constant time over the decoded bytes).
    pub fn verify_hex(&self, message: &[u8], sig_hex: &str) -> bool {
        unhex(sig_hex).is_some_and(|sig| hmac::verify(&self.0, message, &sig).is_ok())
    }

    /// The HMAC of `message`.
    fn tag(&self, message: &[u8]) -> hmac::Tag {
        hmac::sign(&self.0, message)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a signature header was refused. Messages never include the secret or the expected MAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature header missing")]
    Missing,
    #[error("signature header malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "signature header has more than {CANDIDATES_MAX} v1 signatures or {HEADER_BYTES_MAX} bytes"
    )]
    TooLarge,
    #[error("signature timestamp {t} is outside the tolerance of {tolerance_secs} s (now {now})")]
    Expired {
        t: i64,
        now: i64,
        tolerance_secs: i64,
    },
    #[error("no v1 signature matches the payload")]
    Mismatch,
}

/// The header value signing `payload` at `t` (unix seconds).
pub fn header(secret: &Secret, t: i64, payload: &[u8]) -> String {
    format!("t={t},v1={}", secret.sign_hex(&signed_payload(t, payload)))
}

fn signed_payload(t: i64, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(payload.len() + 12);
    m.extend_from_slice(t.to_string().as_bytes());
    m.push(b'.');
    m.extend_from_slice(payload);
    m
}

/// Verifies a `t=...,v1=...` header over `payload` at `now` (unix seconds); returns `t`.
/// Bounded: a header over [`HEADER_BYTES_MAX`] or with more than [`CANDIDATES_MAX`] `v1`
/// parts is refused unread, a stale `t` before any MAC, and the MAC is computed once.
pub fn verify(
    secret: &Secret,
    header: Option<&str>,
    payload: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > HEADER_BYTES_MAX {
        return Err(SignatureError::TooLarge);
    }
    let mut t = None;
    let mut candidates = Vec::with_capacity(CANDIDATES_MAX);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => {
                t = Some(
                    v.parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t is not an integer"))?,
                );
            }
            Some(("v1", _)) if candidates.len() == CANDIDATES_MAX => {
                return Err(SignatureError::TooLarge);
            }
            Some(("v1", v)) => candidates.push(v),
            Some(_) => {} // other schemes (v0) are ignored, as Stripe documents
            None => return Err(SignatureError::Malformed("a part is not key=value")),
        }
    }
    let t = t.ok_or(SignatureError::Malformed("no t="))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1="));
    }
    let stale = now
        .checked_sub(t)
        .is_none_or(|d| d.unsigned_abs() > tolerance_secs.unsigned_abs());
    if stale {
        return Err(SignatureError::Expired {
            t,
            now,
            tolerance_secs,
        });
    }
    let expected = secret.tag(&signed_payload(t, payload));
    let expected = expected.as_ref();
    // every candidate is compared (no early exit), each in constant time
    let matched = candidates.iter().fold(false, |found, c| {
        let same = unhex(c).is_some_and(|sig| bool::from(sig.as_slice().ct_eq(expected)));
        found | same
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    Ok(t)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_documented_example_shape_round_trips() {
        let s = Secret::new("whsec_test");
        let h = header(&s, 1_700_000_000, b"{\"id\":\"evt_1\"}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify(&s, Some(&h), b"{\"id\":\"evt_1\"}", 1_700_000_100, 300),
            Ok(1_700_000_000)
        );
    }

    #[test]
    fn tampered_expired_and_malformed_headers_are_refused() {
        let s = Secret::new("whsec_test");
        let h = header(&s, 1_000, b"body");
        assert_eq!(
            verify(&s, Some(&h), b"bodY", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(&s, Some(&h), b"body", 1_301, 300),
            Err(SignatureError::Expired { .. })
        ));
        assert_eq!(
            verify(&Secret::new("other"), Some(&h), b"body", 1_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&s, None, b"body", 1_000, 300),
            Err(SignatureError::Missing)
        );
        assert!(matches!(
            verify(&s, Some("v1=00"), b"body", 1_000, 300),
            Err(SignatureError::Malformed(_))
        ));
        // a second, valid v1 among bad ones is enough (secret rotation)
        let two = format!("t=1000,v1=deadbeef,{}", &h[7..]);
        assert_eq!(verify(&s, Some(&two), b"body", 1_000, 300), Ok(1_000));
    }

    /// Issue 16, finding 8: every `v1=` candidate was MAC'd over the whole body before the
    /// timestamp was looked at: 30,000 candidates took 16.8 CPU-seconds.
    #[test]
    fn a_hostile_header_costs_at_most_one_mac() {
        let s = Secret::new("whsec_test");
        let body = vec![b'x'; 1 << 20];
        // no trailing comma: every part well formed, as the attack sent it
        let many = format!("t=1000{}", ",v1=00".repeat(30_000));
        let started = std::time::Instant::now();
        assert_eq!(
            verify(&s, Some(&many), &body, 1_000, 300),
            Err(SignatureError::TooLarge)
        );
        let nine = format!("t=1000{}", ",v1=00".repeat(CANDIDATES_MAX + 1));
        assert_eq!(
            verify(&s, Some(&nine), &body, 1_000, 300),
            Err(SignatureError::TooLarge)
        );
        // a stale header is refused for its timestamp, before any MAC is computed
        let stale = format!("t=1000{}", ",v1=00".repeat(CANDIDATES_MAX));
        assert!(matches!(
            verify(&s, Some(&stale), &body, 1_000_000, 300),
            Err(SignatureError::Expired { .. })
        ));
        assert!(matches!(
            verify(&s, Some("t=-9223372036854775808,v1=00"), b"", i64::MAX, 300),
            Err(SignatureError::Expired { .. })
        ));
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        // the most candidates allowed, the valid one last: found
        let good = header(&s, 1_000, b"body");
        let last = format!(
            "t=1000{},{}",
            ",v1=00".repeat(CANDIDATES_MAX - 1),
            &good[7..]
        );
        assert_eq!(verify(&s, Some(&last), b"body", 1_000, 300), Ok(1_000));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(unhex("000fff"), Some(vec![0, 15, 255]));
        assert_eq!(unhex("0g"), None);
    }
}
