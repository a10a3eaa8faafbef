//! Who the customer is and what it has prepaid: its display name from the stored catalog
//! (`catalog_customers`, the body of its highest version, as the rater stores it) and its
//! prepaid credits (`credit_grants`, the latest version of each grant, minus what finalized,
//! not voided invoices applied: the balance the invoicer applies at finalization). Both reads
//! are bounded by the customer (the tables' sorting keys start with it).
//! It never reads another customer's rows.

use clickhouse::Client;
use serde::Deserialize;

/// The customer's display name in the catalog, `None` when it has no catalog entry (or its
/// body has no name).
pub async fn customer_name(
    db: &Client,
    customer: &str,
) -> Result<Option<String>, clickhouse::error::Error> {
    let bodies: Vec<String> = db
        .query(
            "SELECT body FROM catalog_customers WHERE customer = ? \
             ORDER BY version DESC, body LIMIT 1",
        )
        .bind(customer)
        .fetch_all()
        .await?;
    Ok(bodies.first().and_then(|b| name_of(b)))
}

/// The `name` of a catalog customer's body.
fn name_of(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }
    serde_json::from_str::<Named>(body)
        .ok()?
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
}

/// One prepaid credit grant.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub reason: String,
    pub granted_at_ms: i64,
}

/// The customer's prepaid credits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credits {
    /// Newest first.
    pub grants: Vec<Grant>,
    /// (currency, balance in minor units): granted minus applied.
    pub balances: Vec<(String, i64)>,
}

/// The prepaid credits of `customer`.
pub async fn credits(db: &Client, customer: &str) -> Result<Credits, clickhouse::error::Error> {
    let grants: Vec<Grant> = db
        .query(
            "SELECT grant_id, currency, amount_minor, reason, granted_at_ms \
             FROM credit_grants FINAL WHERE customer = ? ORDER BY granted_at_ms DESC, grant_id",
        )
        .bind(customer)
        .fetch_all()
        .await?;
    let applied: Vec<(String, i64)> = db
        .query(
            "SELECT currency, toInt64(sum(credits_applied_minor)) FROM v_invoices \
             WHERE customer = ? AND status NOT IN ('draft', 'void') AND credits_applied_minor != 0 \
             GROUP BY currency",
        )
        .bind(customer)
        .fetch_all()
        .await?;
    let mut balances: std::collections::BTreeMap<String, i64> = Default::default();
    for g in &grants {
        let b = balances.entry(g.currency.clone()).or_default();
        *b = b.saturating_add(g.amount_minor);
    }
    for (currency, used) in applied {
        let b = balances.entry(currency).or_default();
        *b = b.saturating_sub(used);
    }
    Ok(Credits {
        grants,
        balances: balances.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_read_from_the_catalog_body() {
        assert_eq!(
            name_of(r#"{"id": "acme", "version": 2, "name": " Acme Robotics GmbH "}"#),
            Some("Acme Robotics GmbH".into())
        );
        assert_eq!(name_of(r#"{"id": "acme", "name": ""}"#), None);
        assert_eq!(name_of("not json"), None);
    }
}
