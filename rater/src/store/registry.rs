//! Customers, agents and meters in ClickHouse, append-only and versioned
//! (`catalog_customers`, `catalog_agents`, `catalog_meters`, migration 0010), with the rules
//! of [`crate::catalog::registry`].
//!
//! The file bootstraps them: `[[customers]]` entries (and their agents) not stored yet are
//! appended, identical ones skipped, changed ones refused. A `[[meters]]` entry has no version:
//! it is appended as version 1 of a meter not stored yet, and must otherwise equal the
//! meter's latest stored version (the rater prices with the stored meters and the aggregator
//! meters with the file's, so they must agree; a change is first posted as a new version).
//!
//! Two writers adding the same new identity with different bodies at once may both append;
//! reading then keeps the body recorded first and sets the other aside, reported (as any
//! stored version the rules refuse in that order; [`crate::catalog::conflicts`], issue 17).

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_domain::meter::MeterSpec;
use tally_domain::CustomerId;
use tally_platform::store::datetime_secs;

use crate::catalog::conflicts::{Conflict, ConflictKind, Outcome};
use crate::catalog::customers::{AgentSpec, CustomerSpec};
use crate::catalog::meters::MeterEntry;
use crate::catalog::registry::{Novelty, Registry};
use crate::store::error::CatalogStoreError;

/// How many versions an operation appended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub customers: usize,
    pub agents: usize,
    pub meters: usize,
}

impl Appended {
    pub fn any(&self) -> bool {
        self.customers + self.agents + self.meters > 0
    }
}

/// One stored version: `scope` is the customer of an agent, empty otherwise.
#[derive(clickhouse::Row, Deserialize)]
struct StoredRow {
    scope: String,
    id: String,
    version: u32,
    body: String,
    first_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct CustomerInsert<'a> {
    customer: &'a str,
    version: u32,
    body: &'a str,
    recorded_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct AgentInsert<'a> {
    customer: &'a str,
    agent: &'a str,
    version: u32,
    body: &'a str,
    recorded_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct MeterInsert<'a> {
    meter: &'a str,
    version: u32,
    body: &'a str,
    recorded_at: u32,
}

async fn rows(db: &Client, sql: &str) -> Result<Vec<StoredRow>, CatalogStoreError> {
    Ok(db.query(sql).fetch_all::<StoredRow>().await?)
}

/// A stored version the rules refuse after those read before it (ordered by identity, then
/// first recorded, then body): set aside and reported, never a failure of the whole read.
fn set_aside(
    kind: ConflictKind,
    row: &StoredRow,
    identity: String,
    detail: impl ToString,
) -> Conflict {
    Conflict {
        kind,
        outcome: Outcome::SetAside,
        identity,
        detail: format!(
            "{} (recorded {})",
            detail.to_string(),
            tally_domain::period::rfc3339(i64::from(row.first_at) * 1000)
        ),
    }
}

/// The stored meters alone (what a rating pass validates plans against), read like
/// [`load`] reads them; the customers and agents are not read.
pub async fn meters(db: &Client) -> Result<Vec<tally_domain::Meter>, CatalogStoreError> {
    Ok(meters_reported(db).await?.0)
}

/// [`meters`], with the stored meter versions set aside.
pub async fn meters_reported(
    db: &Client,
) -> Result<(Vec<tally_domain::Meter>, Vec<Conflict>), CatalogStoreError> {
    let mut r = Registry::default();
    let mut conflicts = Vec::new();
    load_meters(db, &mut r, &mut conflicts).await?;
    Ok((r.meters(), conflicts))
}

/// Each stored body of `table`'s identities with the first time it was recorded, in the
/// order the rules read them: identity, version, first recorded, body.
fn recorded_sql(scope: &str, id: &str, table: &str) -> String {
    format!(
        "SELECT {scope} AS scope, {id} AS id, version, body, toUInt32(min(recorded_at)) AS \
         first_at FROM {table} GROUP BY scope, id, version, body \
         ORDER BY scope, id, version, first_at, body"
    )
}

async fn load_meters(
    db: &Client,
    r: &mut Registry,
    conflicts: &mut Vec<Conflict>,
) -> Result<(), CatalogStoreError> {
    let meters = rows(db, &recorded_sql("''", "meter", "catalog_meters")).await?;
    for row in meters {
        let identity = format!("meter {} v{}", row.id, row.version);
        let entry = match serde_json::from_str::<MeterEntry>(&row.body) {
            Ok(e) if e.slug == row.id && e.version == row.version => e,
            Ok(_) => {
                conflicts.push(set_aside(
                    ConflictKind::Meter,
                    &row,
                    identity,
                    "the body names another identity",
                ));
                continue;
            }
            Err(e) => {
                conflicts.push(set_aside(ConflictKind::Meter, &row, identity, e));
                continue;
            }
        };
        if let Err(e) = r.add_meter(&entry, "meter") {
            conflicts.push(set_aside(ConflictKind::Meter, &row, identity, e));
        }
    }
    Ok(())
}

/// Everything stored. Identical re-appends read once; of two different bodies for one
/// identity the one recorded first is kept, and a version the rules refuse (the later body,
/// one that no longer validates) is left out ([`load_reported`] says which).
pub async fn load(db: &Client) -> Result<Registry, CatalogStoreError> {
    let (r, conflicts) = load_reported(db).await?;
    for c in &conflicts {
        tracing::warn!(
            kind = c.kind.code(),
            record = %c.identity,
            detail = %c.detail,
            "stored catalog record set aside (ignored): it conflicts with one recorded before it"
        );
    }
    Ok(r)
}

/// [`load`], with the stored versions set aside.
pub async fn load_reported(db: &Client) -> Result<(Registry, Vec<Conflict>), CatalogStoreError> {
    let mut r = Registry::default();
    let mut conflicts = Vec::new();
    load_meters(db, &mut r, &mut conflicts).await?;
    let customers = rows(db, &recorded_sql("''", "customer", "catalog_customers")).await?;
    for row in customers {
        let identity = format!("customer {} v{}", row.id, row.version);
        let added = serde_json::from_str::<CustomerSpec>(&row.body)
            .map_err(|e| e.to_string())
            .and_then(|spec| {
                if spec.id != row.id || spec.version != row.version || !spec.agents.is_empty() {
                    return Err("the body names another identity".to_owned());
                }
                r.add_customer(&spec, "customer").map_err(|e| e.to_string())
            });
        if let Err(e) = added {
            conflicts.push(set_aside(ConflictKind::Customer, &row, identity, e));
        }
    }
    let agents = rows(db, &recorded_sql("customer", "agent", "catalog_agents")).await?;
    for row in agents {
        let identity = format!("agent {} of {} v{}", row.id, row.scope, row.version);
        let added = serde_json::from_str::<AgentSpec>(&row.body)
            .map_err(|e| e.to_string())
            .and_then(|spec| {
                let customer = CustomerId::new(row.scope.clone()).map_err(|e| e.to_string())?;
                if spec.id != row.id || spec.version != row.version {
                    return Err("the body names another identity".to_owned());
                }
                r.add_agent(&customer, &spec, "agent")
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = added {
            conflicts.push(set_aside(ConflictKind::Agent, &row, identity, e));
        }
    }
    Ok((r, conflicts))
}

/// What to append, collected before writing anything.
#[derive(Default)]
struct Pending {
    customers: Vec<CustomerSpec>,
    agents: Vec<(String, AgentSpec)>,
    meters: Vec<MeterEntry>,
}

impl Pending {
    fn customer(&mut self, spec: &CustomerSpec, (n, agents): (Novelty, Vec<Novelty>)) {
        if n == Novelty::New {
            self.customers.push(spec.clone());
        }
        for (a, n) in spec.agents.iter().zip(agents) {
            if n == Novelty::New {
                self.agents.push((spec.id.clone(), a.clone()));
            }
        }
    }

    async fn write(self, db: &Client, now_ms: i64) -> Result<Appended, CatalogStoreError> {
        let recorded_at = datetime_secs(now_ms);
        if !self.meters.is_empty() {
            let mut insert = db.insert::<MeterInsert<'_>>("catalog_meters").await?;
            for m in &self.meters {
                let body = m.body();
                insert
                    .write(&MeterInsert {
                        meter: &m.slug,
                        version: m.version,
                        body: &body,
                        recorded_at,
                    })
                    .await?;
            }
            insert.end().await?;
        }
        if !self.customers.is_empty() {
            let mut insert = db.insert::<CustomerInsert<'_>>("catalog_customers").await?;
            for c in &self.customers {
                let body = c.body();
                insert
                    .write(&CustomerInsert {
                        customer: &c.id,
                        version: c.version,
                        body: &body,
                        recorded_at,
                    })
                    .await?;
            }
            insert.end().await?;
        }
        if !self.agents.is_empty() {
            let mut insert = db.insert::<AgentInsert<'_>>("catalog_agents").await?;
            for (customer, a) in &self.agents {
                let body = a.body();
                insert
                    .write(&AgentInsert {
                        customer,
                        agent: &a.id,
                        version: a.version,
                        body: &body,
                        recorded_at,
                    })
                    .await?;
            }
            insert.end().await?;
        }
        Ok(Appended {
            customers: self.customers.len(),
            agents: self.agents.len(),
            meters: self.meters.len(),
        })
    }
}

/// Appends the file's meters and customers (with their agents) that are not stored yet;
/// refuses changed ones, naming the entry (`meters[0]`, `customers[1].agents[0].id`).
pub async fn bootstrap(
    db: &Client,
    customers: &[CustomerSpec],
    meters: &[MeterSpec],
    now_ms: i64,
) -> Result<Appended, CatalogStoreError> {
    let mut r = load(db).await?;
    let mut pending = Pending::default();
    for (i, spec) in meters.iter().enumerate() {
        let at = format!("meters[{i}]");
        let latest = r.meter_versions(&spec.slug).last().map(|e| (*e).clone());
        match latest {
            None => {
                let entry = MeterEntry::from_spec(spec, 1);
                r.add_meter(&entry, &at)?;
                pending.meters.push(entry);
            }
            Some(latest) if latest.same_definition(&MeterEntry::from_spec(spec, 1)) => {}
            Some(latest) => {
                return Err(CatalogStoreError::Conflict {
                    setting: at,
                    detail: format!(
                        "meter {} differs from its latest stored version {}; the rater prices \
                         with the stored meters, so post the new definition as version {} \
                         (POST /v1/meters) before changing the file",
                        spec.slug,
                        latest.version,
                        latest.version.saturating_add(1)
                    ),
                })
            }
        }
    }
    for (i, spec) in customers.iter().enumerate() {
        let added = r.add_customer(spec, &format!("customers[{i}]"))?;
        pending.customer(spec, added);
    }
    pending.write(db, now_ms).await
}

/// Appends a customer version and its agents (`POST /v1/customers`; errors name
/// `customer.*`); an identical re-post appends nothing.
pub async fn add_customer(
    db: &Client,
    spec: &CustomerSpec,
    now_ms: i64,
) -> Result<Appended, CatalogStoreError> {
    let mut r = load(db).await?;
    let added = r.add_customer(spec, "customer")?;
    let mut pending = Pending::default();
    pending.customer(spec, added);
    pending.write(db, now_ms).await
}

/// Appends an agent version of a stored customer (`POST /v1/customers/{id}/agents`; errors
/// name `agent.*`; an unknown customer is [`CatalogStoreError::NotFound`]).
pub async fn add_agent(
    db: &Client,
    customer: &CustomerId,
    spec: &AgentSpec,
    now_ms: i64,
) -> Result<Appended, CatalogStoreError> {
    let mut r = load(db).await?;
    let mut pending = Pending::default();
    if r.add_agent(customer, spec, "agent")? == Novelty::New {
        pending.agents.push((customer.to_string(), spec.clone()));
    }
    pending.write(db, now_ms).await
}

/// Appends a meter version that the caller has checked (the registry's rules and every
/// stored plan and subscription: [`crate::store::CatalogSource::add_meter`]).
pub(crate) async fn append_meter(
    db: &Client,
    entry: &MeterEntry,
    now_ms: i64,
) -> Result<Appended, CatalogStoreError> {
    let mut pending = Pending::default();
    pending.meters.push(entry.clone());
    pending.write(db, now_ms).await
}
