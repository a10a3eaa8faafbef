//! Collection: the first charge of a finalized invoice. For every open invoice with an amount
//! still owed whose customer's payment profile ([`crate::profiles`]) names the gateway and a
//! saved payment method, and that no payment attempt has touched yet, create the gateway's
//! payment (Stripe: `POST /v1/payment_intents` with `confirm=true`, `off_session=true`) with an
//! `Idempotency-Key` derived from the invoice id (`tally-<invoice>-0`), and log every attempt
//! in `gateway_requests`. The outcome arrives as a webhook and is settled like any other.
//!
//! A pass is stateless and safe to run twice, or in two instances at once: a request whose key
//! already succeeded is not sent again, passes within one process are serialized, and two
//! instances racing send the same key, which the gateway answers with the same payment. It
//! never charges a manual (bank transfer) customer, a customer without a profile, or an
//! invoice that already has a payment attempt (dunning retries those).

use clickhouse::Client;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::dunning::retry::{self, GatewayApi};
use crate::gateway::Collect;
use crate::{dunning, profiles, Error};

/// The actor of collection requests.
pub const ACTOR: &str = "payments:collect";

/// Passes in one process run one at a time.
static PASS: Mutex<()> = Mutex::const_new(());

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CollectReport {
    /// Requests the gateway accepted (2xx) and refused or that failed.
    pub sent: usize,
    pub failed: usize,
    /// Open invoices of customers paying by bank transfer, or without a profile: no request.
    pub manual: usize,
    pub without_profile: usize,
}

/// Retry policy of a collection request that failed (not 2xx, or no answer).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub attempts_max: u32,
    pub backoff_secs: i64,
}

/// One collection pass at `now_ms` through `api`.
pub async fn pass(
    db: &Client,
    api: &GatewayApi,
    policy: Policy,
    now_ms: i64,
) -> Result<CollectReport, Error> {
    let _one_at_a_time = PASS.lock().await;
    let mut report = CollectReport::default();
    let owed = dunning::owed(db).await?;
    let profiles = profiles::all(db).await?;
    let log = retry::tried(db).await?;
    for o in owed
        .iter()
        .filter(|o| o.outstanding_minor > 0 && !o.has_payment_records)
    {
        let Some(profile) = profiles.get(&o.customer) else {
            report.without_profile += 1;
            continue;
        };
        if profile.gateway != api.gateway.name() {
            report.manual += 1;
            continue;
        }
        let Some(req) = api.gateway.collect_request(&Collect {
            invoice_id: &o.invoice_id,
            customer: &o.customer,
            amount_minor: o.outstanding_minor,
            currency: o.currency,
            attempt: 0,
            provider_customer: &profile.provider_customer,
            payment_method: &profile.payment_method,
        }) else {
            continue;
        };
        let Some(attempt) = retry::next_attempt(
            &log,
            &req.idempotency_key,
            policy.attempts_max,
            policy.backoff_secs,
            now_ms,
        ) else {
            continue;
        };
        if retry::send_logged(db, api, o, &req, attempt, ACTOR, now_ms).await? {
            report.sent += 1;
        } else {
            report.failed += 1;
        }
    }
    Ok(report)
}
