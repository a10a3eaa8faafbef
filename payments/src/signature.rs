//! HMAC-SHA256 signatures in Stripe's documented `Stripe-Signature` scheme, used three ways:
//! verifying gateway webhooks, signing the notifications dunning sends, and signing portal
//! links.
//!
//! The header is `t=<unix seconds>,v1=<hex hmac>[,v1=...]`; the signed payload is
//! `"{t}.{body}"`. A header is accepted when one `v1` matches (compared in constant time by
//! `ring::hmac::verify`) and `t` is within the tolerance of `now`. This module never logs or
//! returns a secret, and never accepts an unsigned or stale payload.

use ring::hmac;

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
pub fn verify(
    secret: &Secret,
    header: Option<&str>,
    payload: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => {
                t = Some(
                    v.parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t is not an integer"))?,
                )
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
    let message = signed_payload(t, payload);
    if !candidates.iter().any(|c| secret.verify_hex(&message, c)) {
        return Err(SignatureError::Mismatch);
    }
    if (now - t).abs() > tolerance_secs {
        return Err(SignatureError::Expired {
            t,
            now,
            tolerance_secs,
        });
    }
    Ok(t)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
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

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(unhex("000fff"), Some(vec![0, 15, 255]));
        assert_eq!(unhex("0g"), None);
    }
}
