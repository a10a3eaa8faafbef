//! Portal links: `<base>/portal/<customer>.<expires>.<hmac>` where the HMAC-SHA256 (keyed by
//! `portal.signing_secret`) covers `portal:<customer>:<expires>`. A link opens exactly one
//! customer's pages until it expires; changing any part (another customer, a later expiry)
//! breaks the signature. Customer ids are `[A-Za-z0-9_-]`, so `.` separates safely. This
//! module never accepts an expired or unsigned token.

use crate::signature::Secret;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("portal link is malformed")]
    Malformed,
    #[error("portal link signature does not match")]
    BadSignature,
    #[error("portal link expired at {expires}")]
    Expired { expires: i64 },
}

fn message(customer: &str, expires: i64) -> String {
    format!("portal:{customer}:{expires}")
}

fn customer_ok(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
}

/// The token for `customer`, valid until `expires_secs`.
pub fn token(secret: &Secret, customer: &str, expires_secs: i64) -> Option<String> {
    customer_ok(customer).then(|| {
        format!(
            "{customer}.{expires_secs}.{}",
            secret.sign_hex(message(customer, expires_secs).as_bytes())
        )
    })
}

/// The customer a token opens at `now_secs`.
pub fn verify(secret: &Secret, token: &str, now_secs: i64) -> Result<String, LinkError> {
    let mut parts = token.splitn(3, '.');
    let (Some(customer), Some(expires), Some(sig)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(LinkError::Malformed);
    };
    let expires: i64 = expires.parse().map_err(|_| LinkError::Malformed)?;
    if !customer_ok(customer) {
        return Err(LinkError::Malformed);
    }
    if !secret.verify_hex(message(customer, expires).as_bytes(), sig) {
        return Err(LinkError::BadSignature);
    }
    if now_secs >= expires {
        return Err(LinkError::Expired { expires });
    }
    Ok(customer.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_opens_its_customer_until_it_expires() {
        let s = Secret::new("portal-secret");
        let t = token(&s, "acme", 1_000).unwrap();
        assert_eq!(verify(&s, &t, 999), Ok("acme".into()));
        assert_eq!(
            verify(&s, &t, 1_000),
            Err(LinkError::Expired { expires: 1_000 })
        );
    }

    #[test]
    fn another_customer_or_expiry_in_the_same_signature_is_refused() {
        let s = Secret::new("portal-secret");
        let t = token(&s, "acme", 1_000).unwrap();
        let sig = t.rsplit('.').next().unwrap();
        assert_eq!(
            verify(&s, &format!("globex.1000.{sig}"), 0),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&s, &format!("acme.9999.{sig}"), 0),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify(&Secret::new("other"), &t, 0),
            Err(LinkError::BadSignature)
        );
        assert_eq!(verify(&s, "acme", 0), Err(LinkError::Malformed));
        assert_eq!(token(&s, "a/b", 1), None);
    }
}
