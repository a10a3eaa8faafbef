//! Rating: from a customer's committed usage to charges.
//!
//! It owns a charge and how it is computed from usage and the catalog's terms ([`charge`],
//! pure), reading committed usage and folding it per customer, period, meter and group
//! ([`usage`]), the fees and minimums owed without usage, named from the catalog
//! ([`recurring`]), and explaining a stored charge ([`explain`]). It never changes the catalog
//! and never writes: the pass that appends charges is [`crate::run`].

pub mod charge;
pub mod explain;
pub mod recurring;
pub mod usage;
