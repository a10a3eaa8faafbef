//! Who the customer is and what it has prepaid: its display name from the stored catalog
//! (`catalog_customers`, the body of its highest version, as the rater stores it) and its
//! prepaid credits (`credit_grants`, the latest version of each grant, minus what finalized,
//! not voided invoices applied: the balance the invoicer applies at finalization). Both reads
//! are bounded by the customer (the tables' sorting keys start with it).
//! It never reads another customer's rows.

use clickhouse::Client;
use serde::Deserialize;
use tally_domain::Currency;

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

/// One prepaid credit grant (currency as stored: [`credits`] types it).
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
    /// (currency, balance in minor units): granted minus applied, by code.
    pub balances: Vec<(Currency, i64)>,
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
    Ok(decide_credits(grants, applied))
}

/// The stored currency typed; `None` (logged) when it does not parse: the row is left out.
fn known(table: &str, what: &str, currency: &str) -> Option<Currency> {
    currency
        .parse()
        .map_err(|e| tracing::error!(table, what, error = %e, "row left out: unknown currency"))
        .ok()
}

/// The credits shown from the stored grants and the credit applied per currency. A grant or
/// sum in a currency that does not parse is logged and left out of the list and the balances.
fn decide_credits(grants: Vec<Grant>, applied: Vec<(String, i64)>) -> Credits {
    // keyed by Currency, whose order is its code's (as the strings' were)
    let mut balances: std::collections::BTreeMap<Currency, i64> = Default::default();
    let grants: Vec<Grant> = grants
        .into_iter()
        .filter(|g| {
            let Some(c) = known("credit_grants", &g.grant_id, &g.currency) else {
                return false;
            };
            let b = balances.entry(c).or_default();
            *b = b.saturating_add(g.amount_minor);
            true
        })
        .collect();
    for (currency, used) in applied {
        if let Some(c) = known("invoices", "credits applied", &currency) {
            let b = balances.entry(c).or_default();
            *b = b.saturating_sub(used);
        }
    }
    Credits {
        grants,
        balances: balances.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: &str, currency: &str, amount_minor: i64) -> Grant {
        Grant {
            grant_id: id.into(),
            currency: currency.into(),
            amount_minor,
            reason: "r".into(),
            granted_at_ms: 0,
        }
    }

    #[test]
    fn a_grant_or_applied_sum_in_an_unknown_currency_is_left_out() {
        let c = decide_credits(
            vec![
                grant("g1", "USD", 2_500),
                grant("g2", "ZZZ", 900),
                grant("g3", "EUR", 100),
            ],
            vec![("USD".into(), 400), ("ZZZ".into(), 50)],
        );
        let ids: Vec<_> = c.grants.iter().map(|g| g.grant_id.as_str()).collect();
        assert_eq!(ids, ["g1", "g3"]);
        let b: Vec<_> = c.balances.iter().map(|(c, m)| (c.code(), *m)).collect();
        assert_eq!(b, [("EUR", 100), ("USD", 2_100)]);
    }

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
