//! Tax rates and FX rates in ClickHouse, append-only (`catalog_tax_rates`, `catalog_fx_rates`,
//! migration 0019), with the rules of [`crate::catalog::rates`].
//!
//! The file bootstraps them: `[[tax_rates]]` and `[[fx_rates]]` entries not stored yet are
//! appended, identical ones skipped, changed ones refused (naming the entry). The rater prices
//! with every stored entry, so rates added through the API, or by an earlier file, stay in
//! force. It never updates or deletes a row.
//!
//! Two writers adding the same new identity with different rates at once may both append;
//! reading then keeps the rate recorded first and sets the other aside, reported
//! ([`crate::catalog::conflicts`], issue 17).

use clickhouse::Client;
use serde::{Deserialize, Serialize};
use tally_platform::store::datetime_secs;

use crate::catalog::conflicts::{Conflict, Outcome};
use crate::catalog::fx::FxRateSpec;
use crate::catalog::rates::{effective_from_text, Entries, RateEntry, Rates};
use crate::catalog::registry::Novelty;
use crate::catalog::tax::TaxRateSpec;
use crate::store::error::CatalogStoreError;

/// How many entries an operation appended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RatesAppended {
    pub tax_rates: usize,
    pub fx_rates: usize,
}

impl RatesAppended {
    pub fn any(&self) -> bool {
        self.tax_rates + self.fx_rates > 0
    }
}

/// One stored entry: (`a`, `b`) is (region, code) or (from, to).
#[derive(clickhouse::Row, Deserialize)]
struct StoredRow {
    a: String,
    b: String,
    effective_from: String,
    body: String,
    first_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct TaxInsert<'a> {
    region: &'a str,
    code: &'a str,
    effective_from: &'a str,
    body: &'a str,
    recorded_at: u32,
}

#[derive(clickhouse::Row, Serialize)]
struct FxInsert<'a> {
    from_currency: &'a str,
    to_currency: &'a str,
    effective_from: &'a str,
    body: &'a str,
    recorded_at: u32,
}

/// Reads one kind's rows into `entries`, in the order the rules read them (identity, first
/// recorded, body); a body that does not parse, names another identity or conflicts with one
/// of its identity recorded before it is set aside and reported
/// ([`crate::catalog::conflicts`]), never a failure of the whole read.
async fn load_entries<T: RateEntry>(
    db: &Client,
    sql: &str,
    entries: &mut Entries<T>,
    conflicts: &mut Vec<Conflict>,
) -> Result<(), CatalogStoreError> {
    for row in db.query(sql).fetch_all::<StoredRow>().await? {
        let added = serde_json::from_str::<T>(&row.body)
            .map_err(|e| e.to_string())
            .and_then(|spec| {
                if spec.scope() != (row.a.as_str(), row.b.as_str())
                    || effective_from_text(spec.effective_from()) != row.effective_from
                {
                    return Err("the body names another identity".to_owned());
                }
                entries.add(&spec, "stored").map_err(|e| e.to_string())
            });
        if let Err(detail) = added {
            conflicts.push(Conflict {
                kind: T::CONFLICT,
                outcome: Outcome::SetAside,
                identity: format!(
                    "{} {}/{} from {}",
                    T::KIND,
                    row.a,
                    row.b,
                    row.effective_from
                ),
                detail: format!(
                    "{detail} (recorded {})",
                    tally_domain::period::rfc3339(i64::from(row.first_at) * 1000)
                ),
            });
        }
    }
    Ok(())
}

/// Every stored entry. Identical re-appends read once; of two different rates for one
/// identity the one recorded first is kept ([`load_reported`] says what was set aside).
pub async fn load(db: &Client) -> Result<Rates, CatalogStoreError> {
    Ok(load_reported(db).await?.0)
}

/// [`load`], with the entries set aside.
pub async fn load_reported(db: &Client) -> Result<(Rates, Vec<Conflict>), CatalogStoreError> {
    let mut r = Rates::default();
    let mut conflicts = Vec::new();
    load_entries(
        db,
        "SELECT region AS a, code AS b, effective_from, body, \
         toUInt32(min(recorded_at)) AS first_at FROM catalog_tax_rates \
         GROUP BY a, b, effective_from, body ORDER BY a, b, effective_from, first_at, body",
        &mut r.tax,
        &mut conflicts,
    )
    .await?;
    load_entries(
        db,
        "SELECT from_currency AS a, to_currency AS b, effective_from, body, \
         toUInt32(min(recorded_at)) AS first_at FROM catalog_fx_rates \
         GROUP BY a, b, effective_from, body ORDER BY a, b, effective_from, first_at, body",
        &mut r.fx,
        &mut conflicts,
    )
    .await?;
    Ok((r, conflicts))
}

/// What to append, collected before writing anything.
#[derive(Default)]
struct Pending {
    tax: Vec<TaxRateSpec>,
    fx: Vec<FxRateSpec>,
}

impl Pending {
    async fn write(self, db: &Client, now_ms: i64) -> Result<RatesAppended, CatalogStoreError> {
        let recorded_at = datetime_secs(now_ms);
        if !self.tax.is_empty() {
            let mut insert = db.insert::<TaxInsert<'_>>("catalog_tax_rates").await?;
            for s in &self.tax {
                let (from, body) = (effective_from_text(&s.effective_from), body(s));
                insert
                    .write(&TaxInsert {
                        region: &s.region,
                        code: &s.code,
                        effective_from: &from,
                        body: &body,
                        recorded_at,
                    })
                    .await?;
            }
            insert.end().await?;
        }
        if !self.fx.is_empty() {
            let mut insert = db.insert::<FxInsert<'_>>("catalog_fx_rates").await?;
            for s in &self.fx {
                let (from, body) = (effective_from_text(&s.effective_from), body(s));
                insert
                    .write(&FxInsert {
                        from_currency: &s.from,
                        to_currency: &s.to,
                        effective_from: &from,
                        body: &body,
                        recorded_at,
                    })
                    .await?;
            }
            insert.end().await?;
        }
        Ok(RatesAppended {
            tax_rates: self.tax.len(),
            fx_rates: self.fx.len(),
        })
    }
}

fn body<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Appends the file's rates that are not stored yet; refuses changed ones, naming the entry
/// (`tax_rates[0].rate_percent`, `fx_rates[1].rate`). Nothing is appended if any is refused.
pub async fn bootstrap(
    db: &Client,
    tax_rates: &[TaxRateSpec],
    fx_rates: &[FxRateSpec],
    now_ms: i64,
) -> Result<RatesAppended, CatalogStoreError> {
    let mut r = load(db).await?;
    let mut pending = Pending::default();
    for (i, s) in tax_rates.iter().enumerate() {
        if r.tax.add(s, &format!("tax_rates[{i}]"))? == Novelty::New {
            pending.tax.push(s.clone());
        }
    }
    for (i, s) in fx_rates.iter().enumerate() {
        if r.fx.add(s, &format!("fx_rates[{i}]"))? == Novelty::New {
            pending.fx.push(s.clone());
        }
    }
    pending.write(db, now_ms).await
}

/// Appends a tax rate (`POST /v1/tax_rates`; errors name `tax_rate.*`); an identical re-post
/// appends nothing. A new rate can only complete the catalog, so it needs no other check.
pub async fn add_tax_rate(
    db: &Client,
    spec: &TaxRateSpec,
    now_ms: i64,
) -> Result<RatesAppended, CatalogStoreError> {
    bootstrap_one(db, Some(spec), None, now_ms).await
}

/// Appends an FX rate (`POST /v1/fx_rates`; errors name `fx_rate.*`); an identical re-post
/// appends nothing.
pub async fn add_fx_rate(
    db: &Client,
    spec: &FxRateSpec,
    now_ms: i64,
) -> Result<RatesAppended, CatalogStoreError> {
    bootstrap_one(db, None, Some(spec), now_ms).await
}

async fn bootstrap_one(
    db: &Client,
    tax: Option<&TaxRateSpec>,
    fx: Option<&FxRateSpec>,
    now_ms: i64,
) -> Result<RatesAppended, CatalogStoreError> {
    let mut r = load(db).await?;
    let mut pending = Pending::default();
    if let Some(s) = tax {
        if r.tax.add(s, "tax_rate")? == Novelty::New {
            pending.tax.push(s.clone());
        }
    }
    if let Some(s) = fx {
        if r.fx.add(s, "fx_rate")? == Novelty::New {
            pending.fx.push(s.clone());
        }
    }
    pending.write(db, now_ms).await
}
