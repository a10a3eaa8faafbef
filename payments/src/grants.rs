//! The invoicer's prepaid credit grants (`credit_grants`, latest version of each grant id
//! wins, as the invoicer reads them) still to post: for each grant whose current amount
//! differs from what the ledger booked for it, one `credit_grant` journal for the difference,
//! its id naming the grant and the version (`grant:<grant_id>:<granted_at_ms>`), so a sync
//! run twice, or by two instances, posts each version once. It never changes a grant.

use std::collections::HashMap;

use clickhouse::Client;
use serde::Deserialize;

use crate::ledger::Operation;

/// A grant version to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unposted {
    pub op: Operation,
    pub currency: String,
    pub customer: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct Grant {
    grant_id: String,
    customer: String,
    currency: String,
    amount_minor: i64,
    version_ms: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct Booked {
    journal_id: String,
    held: i64,
}

/// Grant versions the ledger is missing.
pub async fn unposted(db: &Client) -> Result<Vec<Unposted>, clickhouse::error::Error> {
    let grants: Vec<Grant> = db
        .query(
            "SELECT grant_id, argMax(customer, granted_at_ms) AS c, \
             argMax(currency, granted_at_ms) AS cur, argMax(amount_minor, granted_at_ms) AS a, \
             max(granted_at_ms) AS v FROM credit_grants GROUP BY grant_id ORDER BY grant_id",
        )
        .fetch_all()
        .await?;
    let booked_rows: Vec<Booked> = db
        .query(
            "SELECT journal_id, toInt64(sum(credit_minor)) - toInt64(sum(debit_minor)) AS held \
             FROM v_ledger_entries WHERE kind = 'credit_grant' AND account = 'customer_credit' \
             GROUP BY journal_id",
        )
        .fetch_all()
        .await?;
    let mut booked: HashMap<String, i64> = HashMap::new();
    for b in booked_rows {
        if let Some((grant, _version)) = b
            .journal_id
            .strip_prefix("grant:")
            .and_then(|rest| rest.rsplit_once(':'))
        {
            *booked.entry(grant.to_owned()).or_default() += b.held;
        }
    }
    Ok(grants
        .into_iter()
        .filter_map(|g| {
            let delta = g.amount_minor - booked.get(&g.grant_id).copied().unwrap_or(0);
            (delta != 0).then_some(Unposted {
                op: Operation::CreditGranted {
                    grant_id: g.grant_id,
                    version_ms: g.version_ms,
                    delta_minor: delta,
                },
                currency: g.currency,
                customer: g.customer,
            })
        })
        .collect())
}
