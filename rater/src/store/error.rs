//! Why stored entries cannot be read, appended or used: the storage layer's error.
//!
//! It owns the storage failures (ClickHouse, a stored body that no longer parses) and carries
//! the catalog's refusals ([`CatalogError`]) unchanged, variant for variant, so a caller sees
//! one error whether a rule or storage refused. It never decides a refusal itself.

use tally_platform::ConfigError;

use crate::catalog::CatalogError;

/// Why the stored catalog cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogStoreError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The file changes an entry already stored.
    #[error("setting `{setting}`: {detail}")]
    Conflict { setting: String, detail: String },
    /// The stored catalog (or an addition to it) is not valid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The entry an addition refers to is not stored (an agent's customer).
    #[error("{0}")]
    NotFound(String),
    /// A subscription record taking effect at or before the start of a fee billed in advance
    /// that was already charged (docs/PRICING.md, "Fees billed in advance"): it would remove
    /// the charged part instead of shortening it, and the fee would stay billed in full.
    #[error("{0}")]
    Backdated(String),
    /// A cancellation before active records of its line stored for later instants (a
    /// scheduled migration or restart), which would resume billing after it
    /// (docs/PRICING.md, "Subscription lifecycle").
    #[error("{0}")]
    LaterRecords(String),
    /// A change of a customer quarantined because its stored records conflict
    /// ([`crate::catalog::conflicts`], rule 3) that would leave it quarantined, or a
    /// cancellation of such a customer (API: 409 `catalog_conflict`).
    #[error("{0}")]
    Quarantined(String),
    /// A stored body no longer parses.
    #[error("stored catalog entry {identity}: {detail}")]
    Unreadable { identity: String, detail: String },
}

impl From<CatalogError> for CatalogStoreError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Conflict { setting, detail } => {
                CatalogStoreError::Conflict { setting, detail }
            }
            CatalogError::Invalid(e) => CatalogStoreError::Invalid(e),
            CatalogError::NotFound(what) => CatalogStoreError::NotFound(what),
        }
    }
}
