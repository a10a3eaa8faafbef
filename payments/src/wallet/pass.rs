//! The wallet pass: for every customer with a grant, load its facts, decide
//! ([`super::consume::decide`]), append the movements, then post the journals the ledger is
//! missing. Customers are isolated: one whose facts cannot be read or decided is logged and
//! counted (`tally_payments_wallet_failures_total`) and retried on the next pass; the others
//! go on. Within one process every wallet change (passes, grants, voids from the API) holds
//! one lock; run one `serve` per deployment (as for dunning).

use std::collections::{BTreeMap, BTreeSet};

use clickhouse::Client;
use tally_domain::CustomerId;
use tokio::sync::Mutex;

use super::consume::{self, Facts};
use super::store::{self, StoredGrant};
use super::{GrantKind, Movement};
use crate::{ledger, Error};

/// The actor of the movements and journals the pass decides.
pub const ACTOR: &str = "payments:wallet";

static LOCK: Mutex<()> = Mutex::const_new(());

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub customers: usize,
    pub movements: usize,
    pub journals: usize,
    pub failed: usize,
}

/// One pass over every customer with a grant.
pub async fn run(db: &Client, now_ms: i64) -> Result<Report, Error> {
    let _guard = LOCK.lock().await;
    let mut report = Report::default();
    for customer in store::customers(db).await? {
        report.customers += 1;
        let decided = match CustomerId::new(customer.as_str()) {
            Ok(id) => decide_and_append(db, &id, &BTreeSet::new(), ACTOR, now_ms).await,
            Err(e) => Err(Error::Corrupt(format!(
                "wallet_grants customer {customer:?}: {e}"
            ))),
        };
        match decided {
            Ok((m, j)) => {
                report.movements += m;
                report.journals += j;
            }
            Err(e) => {
                report.failed += 1;
                crate::metrics::wallet_failure();
                tracing::error!(%customer, error = %e, "wallet not updated this pass; retried next pass");
            }
        }
    }
    crate::metrics::wallet_movements(report.movements);
    Ok(report)
}

/// Runs `f` holding the wallet lock (the API's grants and voids).
pub async fn locked<T>(f: impl std::future::Future<Output = T>) -> T {
    let _guard = LOCK.lock().await;
    f.await
}

/// Invoices whose reservation the wallet holds (what their usage took, net, is not zero).
fn held(movements: &[Movement]) -> BTreeSet<String> {
    let mut net: BTreeMap<&str, i128> = BTreeMap::new();
    for m in movements
        .iter()
        .filter(|m| !m.invoice_id.is_empty() && !m.grant_id.is_empty())
    {
        *net.entry(&m.invoice_id).or_default() -= i128::from(m.effect_minor());
    }
    net.into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// One customer: load, decide (voiding `voiding`), append; then post every movement's missing
/// journal (those just decided, and any a crash left unposted). Returns (movements,
/// journals). The caller holds the lock.
pub async fn decide_and_append(
    db: &Client,
    customer: &CustomerId,
    voiding: &BTreeSet<String>,
    actor: &str,
    now_ms: i64,
) -> Result<(usize, usize), Error> {
    let grants = store::grants_of(db, customer).await?;
    let movements = store::movements_of(db, customer).await?;
    let periods = store::periods(db, customer, &held(&movements), now_ms).await?;
    let plain: Vec<_> = grants.iter().map(|g| g.grant.clone()).collect();
    let decided = consume::decide(&Facts {
        customer,
        grants: &plain,
        movements: &movements,
        periods: &periods,
        voiding,
        now_ms,
    })?;
    store::append_movements(db, &decided, actor).await?;
    for m in &decided {
        tracing::info!(%customer, movement_id = %m.movement_id, kind = m.kind.as_str(),
            grant_id = %m.grant_id, amount_minor = m.amount_minor, invoice_id = %m.invoice_id,
            actor, "wallet movement");
    }
    let all: Vec<&Movement> = movements.iter().chain(decided.iter()).collect();
    let journals = post_missing(db, customer, &grants, &all, actor, now_ms).await?;
    Ok((decided.len(), journals))
}

async fn post_missing(
    db: &Client,
    customer: &CustomerId,
    grants: &[StoredGrant],
    movements: &[&Movement],
    actor: &str,
    now_ms: i64,
) -> Result<usize, Error> {
    let kinds: BTreeMap<&str, GrantKind> = grants
        .iter()
        .map(|g| (g.grant.grant_id.as_str(), g.grant.kind))
        .collect();
    let mut journals = Vec::new();
    for m in movements {
        if let Some(op) = m.operation(kinds.get(m.grant_id.as_str()).copied()) {
            let j = ledger::post(&op, m.currency)?;
            if !j.lines.is_empty() {
                journals.push(j);
            }
        }
    }
    let ids: Vec<String> = journals.iter().map(|j| j.journal_id.clone()).collect();
    let posted = store::posted(db, &ids).await?;
    let mut n = 0;
    for j in journals.iter().filter(|j| !posted.contains(&j.journal_id)) {
        crate::store::append_journal(db, j, customer.as_str(), actor, now_ms).await?;
        crate::metrics::journal(j.kind);
        n += 1;
    }
    Ok(n)
}
