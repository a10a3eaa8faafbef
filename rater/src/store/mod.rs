//! The storage layer: everything the rater keeps in ClickHouse, append-only.
//!
//! It owns the rows and their reading and appending: the catalog's plans and subscriptions
//! ([`catalog`]), customers, agents and meters ([`registry`]), tax and FX rates ([`rates`]),
//! charges ([`charges`]), corrections of committed events ([`corrections`]) and backfill
//! imports ([`backfill`]). What is valid is decided by the pure rules it calls
//! ([`crate::catalog`], [`crate::corrections`], [`crate::backfill`]); it never decides a rule
//! itself, never updates or deletes a stored row, and is never imported by those rules.

pub mod backfill;
pub mod catalog;
pub mod charges;
pub mod corrections;
pub mod error;
pub mod rates;
pub mod registry;
pub mod source;

pub use error::CatalogStoreError;
pub use source::{CatalogSource, Stored};
