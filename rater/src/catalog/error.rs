//! Why the catalog's pure rules refuse an entry: it changes a stored version, it is invalid
//! (naming the setting or field), or what it refers to is not in the catalog.
//!
//! It owns the refusals of the rules in [`crate::catalog`]; it must never name storage (the
//! storage layer wraps it in [`crate::store::CatalogStoreError`], which adds reading and
//! writing failures).

use tally_platform::ConfigError;

/// Why an entry is refused by the catalog's rules.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The entry changes one already in the catalog (versions are immutable).
    #[error("setting `{setting}`: {detail}")]
    Conflict { setting: String, detail: String },
    /// The entry is not valid, naming the setting or field.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The entry an addition refers to is not in the catalog (an agent's customer).
    #[error("{0}")]
    NotFound(String),
}
