//! The invoicer's prepaid credit grants (`credit_grants`, latest version of each grant id
//! per (customer, grant id), as the invoicer reads them) still to post: for each grant whose current amount
//! differs from what the ledger booked for it, one `credit_grant` journal for the difference,
//! its id naming the customer, the grant and the version
//! (`grant:<customer>:<grant_id>:<granted_at_ms>`), so a sync
//! run twice, or by two instances, posts each version once. It never changes a grant.

use std::collections::HashMap;

use clickhouse::Client;
use serde::Deserialize;
use tally_domain::{Currency, CustomerId};
use tally_invoice::invoice::customer_currency;

use crate::ledger::Operation;

/// A grant version to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unposted {
    pub op: Operation,
    pub currency: Currency,
    pub customer: CustomerId,
}

#[derive(clickhouse::Row, Deserialize)]
struct Grant {
    customer: String,
    grant_id: String,
    currency: String,
    amount_minor: i64,
    version_ms: i64,
}

#[derive(clickhouse::Row, Deserialize)]
struct Booked {
    customer: String,
    journal_id: String,
    held: i64,
}

/// Grant versions the ledger is missing; a grant whose customer id or currency does not
/// validate is logged and left out (never booked in an unknown currency). A grant is identified by (customer, grant id), as
/// in `credit_grants` (its sort key) and the invoicer's balances.
pub async fn unposted(db: &Client) -> Result<Vec<Unposted>, clickhouse::error::Error> {
    let grants: Vec<Grant> = db
        .query(
            // aliases differ from the columns: ClickHouse 18.16 cannot alias an aggregate to
            // the name of a column it reads
            "SELECT customer, grant_id, argMax(currency, granted_at_ms) AS last_currency, \
             argMax(amount_minor, granted_at_ms) AS last_amount_minor, \
             max(granted_at_ms) AS version_ms FROM credit_grants \
             GROUP BY customer, grant_id ORDER BY customer, grant_id",
        )
        .fetch_all()
        .await?;
    let booked_rows: Vec<Booked> = db
        .query(
            "SELECT customer, journal_id, \
             toInt64(sum(credit_minor)) - toInt64(sum(debit_minor)) AS held \
             FROM v_ledger_entries WHERE kind = 'credit_grant' AND account = 'customer_credit' \
             GROUP BY customer, journal_id",
        )
        .fetch_all()
        .await?;
    // journal ids are `grant:<customer>:<grant_id>:<version_ms>`; the customer column says
    // where the grant id starts, so ids holding ':' cannot be misread
    let mut booked: HashMap<(String, String), i64> = HashMap::new();
    for b in booked_rows {
        let prefix = format!("grant:{}:", b.customer);
        if let Some((grant, _version)) = b
            .journal_id
            .strip_prefix(&prefix)
            .and_then(|rest| rest.rsplit_once(':'))
        {
            *booked
                .entry((b.customer.clone(), grant.to_owned()))
                .or_default() += b.held;
        }
    }
    Ok(grants
        .into_iter()
        .filter_map(|g| {
            let key = (g.customer, g.grant_id);
            let delta = g.amount_minor - booked.get(&key).copied().unwrap_or(0);
            if delta == 0 {
                return None;
            }
            let (customer, grant_id) = key;
            let (id, currency) = customer_currency("credit_grants", customer, &g.currency)?;
            Some(Unposted {
                op: Operation::CreditGranted {
                    customer: id.to_string(),
                    grant_id,
                    version_ms: g.version_ms,
                    delta_minor: delta,
                },
                currency,
                customer: id,
            })
        })
        .collect())
}
