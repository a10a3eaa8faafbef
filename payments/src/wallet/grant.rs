//! Grant requests (the API's `POST .../wallet/grants` and `.../wallet/top-ups`) checked into a
//! [`Grant`]: pure, no I/O.

use serde::Deserialize;
use tally_domain::{Currency, CustomerId};

use super::{Grant, GrantKind, WalletError};

/// Priority of a grant that does not name one (the middle, as Stripe's default).
pub const DEFAULT_PRIORITY: u8 = 50;

/// The body of a grant or top-up request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The caller's idempotency key (`[A-Za-z0-9_.-]{1,64}`): the same id twice is one grant.
    pub grant_id: String,
    pub currency: String,
    pub amount_minor: i64,
    #[serde(default)]
    pub priority: Option<u8>,
    /// Unix milliseconds; absent: never expires.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub reason: String,
}

fn invalid(grant_id: &str, reason: impl Into<String>) -> WalletError {
    WalletError::InvalidGrant {
        grant_id: grant_id.to_owned(),
        reason: reason.into(),
    }
}

/// Checks `r` into a grant of `customer` created at `now_ms`.
pub fn check(
    customer: &CustomerId,
    kind: GrantKind,
    r: &GrantRequest,
    now_ms: i64,
) -> Result<Grant, WalletError> {
    let id = &r.grant_id;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !id_ok {
        return Err(invalid(id, "grant_id must be 1 to 64 of [A-Za-z0-9_.-]"));
    }
    let currency: Currency = r
        .currency
        .parse()
        .map_err(|e| invalid(id, format!("currency: {e}")))?;
    if r.amount_minor <= 0 {
        return Err(invalid(id, "amount_minor must be positive"));
    }
    let priority = r.priority.unwrap_or(DEFAULT_PRIORITY);
    if priority > 100 {
        return Err(invalid(id, "priority must be 0 to 100"));
    }
    if let Some(e) = r.expires_at_ms {
        if e <= now_ms {
            return Err(invalid(id, "expires_at_ms must be in the future"));
        }
    }
    if r.reason.len() > 1024 {
        return Err(invalid(id, "reason: at most 1024 bytes"));
    }
    Ok(Grant {
        grant_id: id.clone(),
        customer: customer.clone(),
        currency,
        amount_minor: r.amount_minor,
        kind,
        priority,
        expires_at_ms: r.expires_at_ms,
        created_at_ms: now_ms,
        paid_at_ms: None,
    })
}

/// The id a top-up is paid under: what a payment's `invoice_id` (Stripe's
/// `metadata[invoice_id]`, a bank transfer's `invoice_id`) names.
pub fn payable_id(customer: &CustomerId, grant_id: &str) -> String {
    format!("topup_{customer}_{grant_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, currency: &str, amount: i64) -> GrantRequest {
        GrantRequest {
            grant_id: id.into(),
            currency: currency.into(),
            amount_minor: amount,
            priority: None,
            expires_at_ms: None,
            reason: String::new(),
        }
    }

    #[test]
    fn requests_are_checked_naming_the_field() {
        let acme = CustomerId::new("acme").unwrap();
        let ok = check(&acme, GrantKind::Promotional, &req("g1", "USD", 500), 10).unwrap();
        assert_eq!(
            (ok.currency.code(), ok.priority, ok.customer.as_str()),
            ("USD", DEFAULT_PRIORITY, "acme")
        );
        for (r, needle) in [
            (req("", "USD", 1), "grant_id"),
            (req("a b", "USD", 1), "grant_id"),
            (req("g", "XXX1", 1), "currency"),
            (req("g", "USD", 0), "amount_minor"),
            (
                GrantRequest {
                    priority: Some(101),
                    ..req("g", "USD", 1)
                },
                "priority",
            ),
            (
                GrantRequest {
                    expires_at_ms: Some(10),
                    ..req("g", "USD", 1)
                },
                "expires_at_ms",
            ),
        ] {
            let e = check(&acme, GrantKind::TopUp, &r, 10).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
    }
}
