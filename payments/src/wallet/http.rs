//! The wallet's API answers (routed from [`crate::http::api`], authenticated and audited
//! there): `GET /v1/customers/{id}/wallet`, `POST .../wallet/grants` (promotional),
//! `POST .../wallet/top-ups` (a grant available once paid), `POST .../wallet/grants/{id}/void`.

// Handlers return `Err(response)` for early answers: one per request, never stored.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};

use clickhouse::Client;
use hyper::{Response, StatusCode};
use serde::Serialize;
use tally_domain::{Currency, CustomerId};
use tally_platform::http::{error, json, Body};

use super::grant::{self, GrantRequest};
use super::{pass, remaining, store, GrantKind, Movement, WalletError};
use crate::Error;

type Answer = Result<Response<Body>, Response<Body>>;

/// How many movements the wallet shows, newest first.
pub const RECENT_MOVEMENTS: usize = 50;

fn failed(e: Error) -> Response<Body> {
    match e {
        Error::Wallet(e @ WalletError::InvalidGrant { .. }) => {
            error(StatusCode::BAD_REQUEST, "bad_request", e)
        }
        Error::Wallet(e @ WalletError::UnknownGrant { .. }) => {
            error(StatusCode::NOT_FOUND, "not_found", e)
        }
        e => {
            tracing::error!(error = %e, "wallet api failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "see the service log",
            )
        }
    }
}

/// One grant as the API and the portal show it.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    pub grant_id: String,
    pub kind: GrantKind,
    pub currency: Currency,
    pub amount_minor: i64,
    pub remaining_minor: i64,
    pub priority: u8,
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// `pending` (a top-up not paid yet), `active`, `used`, `expired`, `voided`.
    pub status: &'static str,
    /// For top-ups: the id to pay it under (a payment's `invoice_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payable_id: Option<String>,
    pub reason: String,
    pub actor: String,
}

/// A customer's wallet as the API and the portal show it.
#[derive(Debug, Clone, Serialize)]
pub struct WalletView {
    pub customer: CustomerId,
    /// Credit available per currency: the sum of the movements.
    pub balances: BTreeMap<Currency, i64>,
    pub grants: Vec<GrantView>,
    /// The latest movements, newest first.
    pub movements: Vec<Movement>,
}

/// `customer`'s wallet (reads only its rows).
pub async fn view(db: &Client, customer: &CustomerId) -> Result<WalletView, Error> {
    let grants = store::grants_of(db, customer).await?;
    let movements = store::movements_of(db, customer).await?;
    let left = remaining(customer, &movements)?;
    let balances = super::balances(customer, &movements)?;
    let has =
        |g: &str, k: super::MovementKind| movements.iter().any(|m| m.grant_id == g && m.kind == k);
    let grants = grants
        .into_iter()
        .map(|s| {
            let g = s.grant;
            let remaining_minor = left.get(&g.grant_id).copied().unwrap_or(0);
            let status = if has(&g.grant_id, super::MovementKind::Void) {
                "voided"
            } else if !has(&g.grant_id, super::MovementKind::Grant) {
                "pending"
            } else if has(&g.grant_id, super::MovementKind::Expire) && remaining_minor == 0 {
                "expired"
            } else if remaining_minor == 0 {
                "used"
            } else {
                "active"
            };
            GrantView {
                payable_id: (g.kind == GrantKind::TopUp)
                    .then(|| grant::payable_id(customer, &g.grant_id)),
                grant_id: g.grant_id,
                kind: g.kind,
                currency: g.currency,
                amount_minor: g.amount_minor,
                remaining_minor,
                priority: g.priority,
                expires_at_ms: g.expires_at_ms,
                created_at_ms: g.created_at_ms,
                status,
                reason: s.reason,
                actor: s.actor,
            }
        })
        .collect();
    let mut recent = movements;
    recent.reverse();
    recent.truncate(RECENT_MOVEMENTS);
    Ok(WalletView {
        customer: customer.clone(),
        balances,
        grants,
        movements: recent,
    })
}

/// The customer id of a path: 400 `bad_request` naming it when it is not one.
fn customer_id(customer: &str) -> Result<CustomerId, Response<Body>> {
    CustomerId::new(customer).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("customer: {e}"),
        )
    })
}

/// `GET /v1/customers/{id}/wallet`.
pub async fn get(db: &Client, customer: &str) -> Answer {
    let customer = customer_id(customer)?;
    let v = view(db, &customer).await.map_err(failed)?;
    Ok(json(StatusCode::OK, &v))
}

/// `POST .../wallet/grants` (promotional) and `.../wallet/top-ups`: records the grant (the
/// same `grant_id` again records nothing new) and runs the customer's wallet at once, so a
/// promotional grant pays for the open period's usage before the answer.
pub async fn create(
    db: &Client,
    customer: &str,
    kind: GrantKind,
    body: &[u8],
    actor: &str,
    now_ms: i64,
) -> Answer {
    let customer = &customer_id(customer)?;
    let r: GrantRequest = serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", e))?;
    let g = grant::check(customer, kind, &r, now_ms).map_err(|e| failed(Error::Wallet(e)))?;
    let created = pass::locked(async {
        let existing = store::grants_of(db, customer).await?;
        let created = !existing.iter().any(|s| s.grant.grant_id == g.grant_id);
        if created {
            store::append_grant(db, &g, &r.reason, actor).await?;
            tracing::info!(%customer, grant_id = %g.grant_id, kind = kind.as_str(),
                currency = %g.currency, amount_minor = g.amount_minor, actor, "wallet grant recorded");
        }
        pass::decide_and_append(db, customer, &BTreeSet::new(), actor, now_ms).await?;
        Ok::<_, Error>(created)
    })
    .await
    .map_err(failed)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let answer = serde_json::json!({
        "grant_id": g.grant_id,
        "kind": kind,
        "currency": g.currency,
        "amount_minor": g.amount_minor,
        "created": created,
        "payable_id": (kind == GrantKind::TopUp).then(|| grant::payable_id(customer, &g.grant_id)),
    });
    Ok(json(status, &answer))
}

/// `POST .../wallet/grants/{id}/void`: what is left of the grant is voided (and whatever
/// usage gives back to it later).
pub async fn void(db: &Client, customer: &str, grant_id: &str, actor: &str, now_ms: i64) -> Answer {
    let id = customer_id(customer)?;
    let customer = &id;
    pass::locked(async {
        let grants = store::grants_of(db, customer).await?;
        if !grants.iter().any(|s| s.grant.grant_id == grant_id) {
            return Err(Error::Wallet(WalletError::UnknownGrant {
                customer: customer.to_string(),
                grant_id: grant_id.to_owned(),
            }));
        }
        let voiding = BTreeSet::from([grant_id.to_owned()]);
        pass::decide_and_append(db, customer, &voiding, actor, now_ms).await
    })
    .await
    .map_err(failed)?;
    get(db, customer.as_str()).await
}
