//! Bootstrapping the stored catalog from the configuration file, in the one order that
//! works: the file is first checked alone (its errors name its settings), then its meters and
//! customers are appended ([`crate::store::registry`]), then its tax and FX rates
//! ([`crate::store::rates`]), then its plan versions and subscriptions
//! ([`crate::store::catalog`]), because plans are validated against the stored meters and
//! priced with the stored rates; the rater then rates with everything stored
//! ([`crate::store::CatalogSource::current`]), so entries appended earlier (by the API or an
//! older file) stay in force.
//!
//! It owns that order and nothing else: the rules are [`crate::catalog`]'s, the rows
//! [`crate::store`]'s. It never changes a stored entry (a changed one is refused).

use clickhouse::Client;
use tally_domain::meter::{validate_meters, MeterError, MeterSpec};
use tally_platform::ConfigError;

use crate::catalog::customers::CustomerSpec;
use crate::catalog::fx::{FxRateSpec, FxTable};
use crate::catalog::registry::Registry;
use crate::catalog::tax::{TaxRateSpec, TaxTable};
use crate::catalog::{Catalog, CatalogError};
use crate::config::{PlanSpec, RaterConfig, SubscriptionSpec};
use crate::store::catalog::Bootstrapped;
use crate::store::rates::RatesAppended;
use crate::store::registry::Appended;
use crate::store::{self, CatalogStoreError};

/// The catalog sections of the configuration file: `[[meters]]`, `[[customers]]`,
/// `[[plans]]`, `[[subscriptions]]`, `[[tax_rates]]`, `[[fx_rates]]`.
#[derive(Debug, Clone, Copy)]
pub struct FileCatalog<'a> {
    pub meters: &'a [MeterSpec],
    pub customers: &'a [CustomerSpec],
    pub plans: &'a [PlanSpec],
    pub subscriptions: &'a [SubscriptionSpec],
    pub tax_rates: &'a [TaxRateSpec],
    pub fx_rates: &'a [FxRateSpec],
}

/// Why the file's catalog sections are refused before anything is stored.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("setting `meters`")]
    Meters(#[source] MeterError),
    #[error(transparent)]
    Customers(#[from] CatalogError),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// What the file appended to each store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FileAppended {
    pub registry: Appended,
    pub rates: RatesAppended,
    pub catalog: Bootstrapped,
}

impl FileCatalog<'_> {
    /// Checks the file alone, naming its settings: meters, customers (with agents), tax and
    /// FX rates, plans and subscriptions. That taxed and converted subscriptions have rates is
    /// checked later against the stored rates, which the API may have completed.
    pub fn check(&self, rater: &RaterConfig) -> Result<(), FileError> {
        let meters = validate_meters(self.meters.to_vec()).map_err(FileError::Meters)?;
        let mut declared = Registry::default();
        for (i, c) in self.customers.iter().enumerate() {
            declared.add_customer(c, &format!("customers[{i}]"))?;
        }
        TaxTable::new(self.tax_rates.to_vec())?;
        FxTable::new(self.fx_rates.to_vec())?;
        Catalog::new(
            self.plans.to_vec(),
            self.subscriptions.to_vec(),
            rater,
            &meters,
        )?;
        Ok(())
    }

    /// Appends the file's entries not stored yet, store by store in the order above (each
    /// refuses changed entries, naming them), and logs what each appended.
    pub async fn bootstrap(
        &self,
        db: &Client,
        now_ms: i64,
    ) -> Result<FileAppended, CatalogStoreError> {
        let registry = store::registry::bootstrap(db, self.customers, self.meters, now_ms).await?;
        tracing::info!(
            meters = registry.meters,
            customers = registry.customers,
            agents = registry.agents,
            "customers and meters bootstrapped from the file"
        );
        let rates = store::rates::bootstrap(db, self.tax_rates, self.fx_rates, now_ms).await?;
        tracing::info!(
            tax_rates = rates.tax_rates,
            fx_rates = rates.fx_rates,
            "tax and fx rates bootstrapped from the file"
        );
        let catalog = store::catalog::bootstrap(db, self.plans, self.subscriptions, now_ms).await?;
        tracing::info!(
            plans = catalog.plans_appended,
            subscriptions = catalog.subscriptions_appended,
            "catalog bootstrapped from the file"
        );
        Ok(FileAppended {
            registry,
            rates,
            catalog,
        })
    }
}
