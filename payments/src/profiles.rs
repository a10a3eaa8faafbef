//! How each customer pays: the payment profile (gateway, the provider's customer and saved
//! payment method) recorded through the API, append-only in `customer_payment_profiles`; the
//! latest record of a customer is in force. Collection reads it to decide whether an invoice
//! is charged automatically. It never updates or deletes a record and never stores card data
//! (only the provider's ids).

use std::collections::HashMap;

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::CustomerId;
use tally_platform::store::datetime_secs;

/// A customer's payment settings: the stored row and the API's body (customer as stored;
/// [`all`] keys them by a validated [`CustomerId`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct Profile {
    pub customer: String,
    /// `stripe` (charged automatically) or `manual` (bank transfer: no request).
    pub gateway: String,
    /// The provider's customer id (Stripe: `cus_...`).
    pub provider_customer: String,
    /// The provider's saved payment method (Stripe: `pm_...`).
    pub payment_method: String,
    pub actor: String,
    pub at_ms: i64,
}

#[derive(clickhouse::Row, Serialize)]
struct Record<'a> {
    customer: &'a str,
    gateway: &'a str,
    provider_customer: &'a str,
    payment_method: &'a str,
    actor: &'a str,
    at_ms: i64,
    at: u32,
}

/// Why a profile is refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("gateway must be \"stripe\" or \"manual\", not {0:?}")]
    Gateway(String),
    #[error("a stripe profile needs provider_customer (cus_...) and payment_method (pm_...)")]
    StripeIds,
}

impl Profile {
    /// Checks the gateway and that a Stripe profile names its customer and payment method.
    pub fn validate(&self) -> Result<(), ProfileError> {
        match self.gateway.as_str() {
            "manual" => Ok(()),
            "stripe" if !self.provider_customer.is_empty() && !self.payment_method.is_empty() => {
                Ok(())
            }
            "stripe" => Err(ProfileError::StripeIds),
            g => Err(ProfileError::Gateway(g.to_owned())),
        }
    }
}

/// Appends `p` (it is in force from now on).
pub async fn append(db: &Client, p: &Profile) -> Result<(), clickhouse::error::Error> {
    let mut insert = db.insert::<Record<'_>>("customer_payment_profiles").await?;
    insert
        .write(&Record {
            customer: &p.customer,
            gateway: &p.gateway,
            provider_customer: &p.provider_customer,
            payment_method: &p.payment_method,
            actor: &p.actor,
            at_ms: p.at_ms,
            at: datetime_secs(p.at_ms),
        })
        .await?;
    insert.end().await
}

const LATEST: &str = "SELECT customer, argMax(gateway, at_ms) AS g, \
     argMax(provider_customer, at_ms) AS pc, argMax(payment_method, at_ms) AS pm, \
     argMax(actor, at_ms) AS a, max(at_ms) AS t FROM customer_payment_profiles";

/// The profile in force of every customer that has one. A profile whose stored customer id
/// does not validate is logged and left out (no invoice of such a customer is collected: the
/// invoices' customers are validated too), and every other customer's is read.
pub async fn all(db: &Client) -> Result<HashMap<CustomerId, Profile>, clickhouse::error::Error> {
    let rows: Vec<Profile> = db
        .query(&format!("{LATEST} GROUP BY customer"))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|p| match CustomerId::new(p.customer.clone()) {
            Ok(id) => Some((id, p)),
            Err(e) => {
                tracing::error!(table = "customer_payment_profiles", error = %e,
                    "row left out: customer id does not validate");
                None
            }
        })
        .collect())
}

/// The profile in force of `customer`.
pub async fn of(db: &Client, customer: &str) -> Result<Option<Profile>, clickhouse::error::Error> {
    db.query(&format!("{LATEST} WHERE customer = ? GROUP BY customer"))
        .bind(customer)
        .fetch_optional()
        .await
}
